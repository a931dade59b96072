"""The verdict rule: seeds vs single seed, tie band, direction, missing data."""

from __future__ import annotations

import math

import pytest
import torch

from keelctl.repro.verdicts import (
    NO_DATA,
    NOT_AT_SCALE,
    OPPOSITE,
    REPRODUCED,
    claim,
    compare,
    fmt_group,
)


def test_several_seeds_need_disjoint_mean_std_intervals():
    assert compare([1.0, 1.2], [2.0, 2.2], "lower")[0] == REPRODUCED
    assert compare([1.0, 1.2], [2.0, 2.2], "higher")[0] == OPPOSITE
    # std of [1, 3] is 1.41: the intervals overlap
    assert compare([1.0, 3.0], [2.5, 2.7], "lower")[0] == NOT_AT_SCALE


def test_single_seed_uses_the_tie_band_and_says_so():
    assert compare([1.0], [1.5], "lower", tie=0.1) == (
        REPRODUCED + " (single seed)",
        "difference 0.5 beyond band 0.1",
    )
    assert compare([1.0], [1.05], "lower", tie=0.1)[0] == NOT_AT_SCALE + " (single seed)"
    assert compare([2.0], [1.0], "lower")[0] == OPPOSITE + " (single seed)"


def test_practical_significance_band_makes_a_small_difference_a_tie_whatever_the_seeds():
    # design's final norm at 256 sub-layers: 0.0006 nats apart with tight, disjoint intervals
    keel, variant = [2.1000, 2.1001, 2.0999], [2.1006, 2.1007, 2.1005]
    assert compare(keel, variant, "lower", tie=0.01) == (
        NOT_AT_SCALE + " (tie)",
        "difference 0.0006 within band 0.021",  # 1% of 2.1006 beats the 0.01 floor
    )
    # beyond max(tie, 1%): the interval rule decides as before
    assert compare([2.0, 2.01], [2.1, 2.11], "lower", tie=0.01)[0] == REPRODUCED
    # the absolute floor rules where 1% of the numbers is smaller (values near 0)
    assert compare([0.05, 0.051], [0.058, 0.059], "lower", tie=0.01)[0] == NOT_AT_SCALE + " (tie)"
    # the relative part rules for large numbers: 0.5 apart at 100 is within 1%
    assert compare([100.0], [100.5], "lower", tie=0.01)[0] == NOT_AT_SCALE + " (single seed)"
    assert compare([100.0], [102.0], "lower", tie=0.01)[0] == REPRODUCED + " (single seed)"


def test_missing_or_non_finite_data_is_not_a_verdict():
    assert compare([], [1.0], "lower")[0] == NO_DATA
    assert compare([math.nan], [1.0], "lower")[0] == NOT_AT_SCALE + " (not finite)"


def test_a_diverged_run_is_worse_than_any_finite_one():
    inf = math.inf
    # lower is better (a loss): +inf is a diverged run's
    assert compare([2.1, 2.2], [inf, inf], "lower") == (
        REPRODUCED,
        "every B run diverged, no A run did",
    )
    assert compare([inf, inf], [2.1, 2.2], "lower")[0] == OPPOSITE
    assert compare([2.1], [inf], "lower")[0] == REPRODUCED + " (single seed)"
    # higher is better: -inf is the worst
    assert compare([0.1, 0.2], [-inf, -inf], "higher")[0] == REPRODUCED
    # +inf on a higher-is-better number is not a failure: no verdict by direction
    assert compare([0.1, 0.2], [inf, inf], "higher")[0] == NOT_AT_SCALE + " (some runs diverged)"
    # only some seeds diverged, or both sides did: no finding
    assert compare([2.1, 2.2], [inf, 3.0], "lower")[0] == NOT_AT_SCALE + " (some runs diverged)"
    assert compare([inf], [inf], "lower")[0] == NOT_AT_SCALE + " (some runs diverged)"
    # a nan beside an infinity is still not finite
    assert compare([math.nan], [inf], "lower")[0] == NOT_AT_SCALE + " (not finite)"


def test_final_loss_reads_a_diverged_run_as_infinite():
    from types import SimpleNamespace

    from keelctl.repro.readings import final_loss

    def run(**summary):
        return SimpleNamespace(summary=summary)

    assert final_loss(run(status="diverged", final_val_loss=math.nan)) == math.inf
    assert final_loss(run(status="finished", final_val_loss=2.5)) == 2.5
    assert math.isnan(final_loss(run(status="finished")))


def test_claim_row_formats_groups():
    v = claim("c", "p", [1.0, 2.0], [3.0], "lower", names=("keel", "pre_ln"))
    assert v.ours == "keel 1.5 ± 0.7071 (n=2) vs pre_ln 3"
    assert v.verdict == REPRODUCED + " (single seed)"
    assert fmt_group([]) == "n/a"
    assert fmt_group([2.0, math.inf, math.inf]) == "2 + 2 diverged"
    assert fmt_group([math.inf, math.inf]) == "2 diverged"


def test_claims_without_runs_are_counted_apart_from_findings():
    from keelctl.repro.report import verdict_line
    from keelctl.repro.verdicts import Verdict

    verdicts = [
        Verdict("a", "", "", compare([1.0, 1.1], [2.0, 2.1], "lower")[0], ""),
        Verdict("b", "", "", compare([], [2.0], "lower")[0], ""),
    ]
    assert verdict_line(verdicts) == (
        "**Verdicts: 1 reproduced, 0 not at this scale, 0 opposite, 1 no data yet (of 2 claims).**"
    )


def test_a_vanished_gradient_counts_at_the_float32_floor_not_as_not_finite():
    """A stream gradient flushed to exactly 0 fell at least to float32's smallest normal
    number (1.18e-38 = 37.9 decades): a bound in the claim's direction, not a diverged run."""
    from types import SimpleNamespace

    from keelctl.repro.readings import FROM, VANISHED, grad_level

    def curve(bottom: float) -> SimpleNamespace:
        norms = [1.0] * 8
        norms[FROM] = bottom
        return SimpleNamespace(stream_grad_norm=norms)

    assert grad_level(curve(1e-3)) == math.log10(1e3)
    assert grad_level(curve(0.0)) == VANISHED
    assert 10.0 ** (-VANISHED) == pytest.approx(torch.finfo(torch.float32).tiny)
    keel = [0.05, 0.06, 0.08]
    deepnorm = [0.06, grad_level(curve(0.0)), grad_level(curve(0.0))]
    assert compare(keel, deepnorm, "lower")[0] == REPRODUCED
