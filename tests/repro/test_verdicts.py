"""The verdict rule: seeds vs single seed, tie band, direction, missing data."""

from __future__ import annotations

import math

from keelctl.repro.verdicts import NOT_AT_SCALE, OPPOSITE, REPRODUCED, claim, compare, fmt_group


def test_several_seeds_need_disjoint_mean_std_intervals():
    assert compare([1.0, 1.2], [2.0, 2.2], "lower")[0] == REPRODUCED
    assert compare([1.0, 1.2], [2.0, 2.2], "higher")[0] == OPPOSITE
    # std of [1, 3] is 1.41: the intervals overlap
    assert compare([1.0, 3.0], [2.5, 2.7], "lower")[0] == NOT_AT_SCALE


def test_single_seed_uses_the_tie_band_and_says_so():
    assert compare([1.0], [1.5], "lower", tie=0.1) == (
        REPRODUCED + " (single seed)",
        "difference 0.5 beyond tie 0.1",
    )
    assert compare([1.0], [1.05], "lower", tie=0.1)[0] == NOT_AT_SCALE + " (single seed)"
    assert compare([2.0], [1.0], "lower")[0] == OPPOSITE + " (single seed)"


def test_missing_or_non_finite_data_is_not_a_verdict():
    assert compare([], [1.0], "lower")[0] == NOT_AT_SCALE + " (no data)"
    assert compare([math.nan], [1.0], "lower")[0] == NOT_AT_SCALE + " (no data)"


def test_claim_row_formats_groups():
    v = claim("c", "p", [1.0, 2.0], [3.0], "lower", names=("keel", "pre_ln"))
    assert v.ours == "keel 1.5 ± 0.7071 (n=2) vs pre_ln 3"
    assert v.verdict == REPRODUCED + " (single seed)"
    assert fmt_group([]) == "n/a"
