"""Verdicts on the paper's claims, computed from measurements by one stated rule (docs/repro.md).

A claim says "A's number is better than B's" (A is Keel, B a baseline, or for depth-sweep's
gain, the deepest depth against the shallowest) on one number per seed (a max LR, a validation
loss, a gradient ratio), where higher or lower is better:

  - the practical-significance band, first, whatever the seeds: a difference of the means
    within band = max(tie, 1% of the larger |mean|), `tie` an absolute amount stated with each
    claim (0.01 nats/token for losses), is "not at this scale (tie)" ("(single seed)" for one
    seed): a difference too small to matter is no finding, however many seeds agree on it.
  - beyond the band, two or more seeds on each side: the intervals mean +- std (sample std) of
    the two groups. Disjoint and in the claim's direction: "reproduced"; disjoint against it:
    "opposite"; overlapping: "not at this scale".
  - beyond the band, one seed on a side: by direction, and the verdict says "(single seed)".
  - no finished run on a side (a partial sweep): "no data yet", counted apart from the three.
  - a diverged run's loss is +inf, worse than any finite loss: every run on one side diverged
    and none on the other: decided by direction ("every B run diverged"); a side with only some
    runs diverged: "not at this scale (some runs diverged)".
  - any other non-finite number (nan: a number that does not exist, such as a diverged run's
    gradient level) on either side: "not at this scale (not finite)".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

REPRODUCED, NOT_AT_SCALE, OPPOSITE = "reproduced", "not at this scale", "opposite"
NO_DATA = "no data yet"
# The band's relative part: differences under 1% of the numbers compared are ties.
REL_BAND = 0.01


@dataclass(frozen=True)
class Verdict:
    """One claim's row in a report: what the paper says, what we measured, and the verdict."""

    claim: str
    paper: str
    ours: str
    verdict: str
    rule: str


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; nan when a value is not
    finite, e.g. a diverged run's loss: statistics.stdev cannot take one)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, (statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan)


def fmt_group(values: Sequence[float], fmt: str = ".4g") -> str:
    """'3.2' for one seed, '3.2 ± 0.1 (n=3)' for several; infinite values (diverged runs'
    losses) are counted apart: '3.2 + 1 diverged'."""
    if not values:
        return "n/a"
    failed = sum(math.isinf(v) for v in values)
    if failed:
        rest = fmt_group([v for v in values if not math.isinf(v)], fmt)
        return f"{rest} + {failed} diverged" if failed < len(values) else f"{failed} diverged"
    m, s = mean_std(values)
    return f"{m:{fmt}}" if len(values) == 1 else f"{m:{fmt}} ± {s:{fmt}} (n={len(values)})"


def compare(
    a: Sequence[float], b: Sequence[float], better: Literal["higher", "lower"], tie: float = 0.0
) -> tuple[str, str]:
    """(verdict, reason) for the claim "A's number is better than B's"."""
    if not a or not b:
        return NO_DATA, "a side has no finished run yet"
    if any(math.isnan(v) for v in [*a, *b]):
        return NOT_AT_SCALE + " (not finite)", "a number is not finite"
    if not all(math.isfinite(v) for v in [*a, *b]):
        return _with_failures(a, b, better)
    sign = 1.0 if better == "higher" else -1.0
    (mk, sk), (mb, sb) = mean_std(a), mean_std(b)
    diff, width = sign * (mk - mb), band(mk, mb, tie)
    several = len(a) > 1 and len(b) > 1
    if abs(diff) <= width:
        label = " (tie)" if several else " (single seed)"
        return NOT_AT_SCALE + label, f"difference {abs(diff):.3g} within band {width:.3g}"
    if several:
        if diff > sk + sb:
            return REPRODUCED, "mean ± std intervals disjoint"
        if -diff > sk + sb:
            return OPPOSITE, "mean ± std intervals disjoint"
        return NOT_AT_SCALE, "mean ± std intervals overlap"
    verdict = REPRODUCED if diff > 0 else OPPOSITE
    return verdict + " (single seed)", f"difference {abs(diff):.3g} beyond band {width:.3g}"


def band(mean_a: float, mean_b: float, tie: float) -> float:
    """The practical-significance band: max(tie, 1% of the larger |mean|)."""
    return max(tie, REL_BAND * max(abs(mean_a), abs(mean_b)))


def _with_failures(a: Sequence[float], b: Sequence[float], better: str) -> tuple[str, str]:
    """The rule when a side holds an infinite number: a diverged run's loss (+inf for a lower-is-
    better number, -inf for a higher-is-better one), worse than any finite number."""
    worst = math.inf if better == "lower" else -math.inf
    seeds = "" if len(a) > 1 and len(b) > 1 else " (single seed)"
    finite_a, finite_b = all(map(math.isfinite, a)), all(map(math.isfinite, b))
    if finite_a and all(v == worst for v in b):
        return REPRODUCED + seeds, "every B run diverged, no A run did"
    if finite_b and all(v == worst for v in a):
        return OPPOSITE + seeds, "every A run diverged, no B run did"
    return NOT_AT_SCALE + " (some runs diverged)", "runs diverged on both sides or on some seeds"


def every_run(holds: Sequence[bool], against: Sequence[bool], single: bool) -> str:
    """The rule of a claim judged run by run: "reproduced" when it holds in every run,
    "opposite" when every run goes against it, "not at this scale" otherwise, "no data yet"
    without a run; "(single seed)" when a side has one seed."""
    if not holds:
        return NO_DATA
    verdict = REPRODUCED if all(holds) else OPPOSITE if all(against) else NOT_AT_SCALE
    return verdict + (" (single seed)" if single else "")


def claim(
    text: str,
    paper: str,
    a: Sequence[float],
    b: Sequence[float],
    better: Literal["higher", "lower"],
    tie: float = 0.0,
    fmt: str = ".4g",
    names: tuple[str, str] = ("keel", "pre_ln"),
) -> Verdict:
    """A Verdict row for "A better than B" (see the module docstring for the rule)."""
    verdict, reason = compare(a, b, better, tie)
    ours = f"{names[0]} {fmt_group(a, fmt)} vs {names[1]} {fmt_group(b, fmt)}"
    return Verdict(text, paper, ours, verdict, f"{better} is better; {reason}")
