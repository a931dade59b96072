"""Divergence of a training run, decided from its loss curve by explicit rules (docs/repro.md).

The paper (Table 1) calls a run diverged at "an early plateau, an unrecovered spike, or an
abnormally slow loss decrease" and reports the last learning rate before that point. Here each
of those is one rule over the per-step loss curve, checked in this order on every step, and the
earliest step any rule fires at is the divergence step:

    nan      the raw loss is NaN or +-Inf.
    spike    the smoothed loss stays above spike_factor x its running minimum for more than
             spike_steps consecutive points (a spike that comes back down sooner is recovered).
    plateau  in a window of plateau_window points that starts after the first check_after
             fraction of the run, the smoothed loss has not gone below (1 - plateau_min_drop) x
             the best it had reached by the window's first point, nor risen above
             spike_factor x that best (a curve that rose that far is a spike), AND it stayed
             above plateau_ref_factor x the reference curve at every point of the window; the
             divergence step is the first step of that window. Without a reference curve the
             rule is not checked: a plateau only counts when other runs kept learning.
    slow     after check_after, the smoothed loss stays above slow_factor x a reference curve's
             smoothed loss at the same step for more than slow_steps consecutive points.

Ties go to the rule listed first. "Smoothed" is a trailing mean over `smooth` points, so one
noisy batch neither fires a rule nor sets the running minimum. detect_divergence is a pure
function: it reads nothing and writes nothing. DivergenceRules.for_ramp scales every window
with the length of the LR ramp (the calibration, stated in docs/repro.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from keelctl.errors import KeelError


@dataclass(frozen=True)
class DivergenceRules:
    """Thresholds of the four rules; every count is in logged points (one per step when the run
    logs every step)."""

    smooth: int = 5
    spike_factor: float = 1.5
    spike_steps: int = 10
    plateau_window: int = 50
    plateau_min_drop: float = 0.01
    check_after: float = 0.1
    slow_factor: float = 1.5
    slow_steps: int = 10
    plateau_ref_factor: float = 1.1

    @classmethod
    def for_ramp(cls, ramp_steps: int) -> DivergenceRules:
        """The calibrated rules for a ramp of `ramp_steps` logged points: windows as fractions
        of the ramp (smooth 1/50, spike and slow streaks 1/25, plateau window 1/5), a spike at
        1.2 x the running minimum, a plateau only 10% above the reference. Fixed from the
        committed 250-step curves (docs/repro.md) before any new run."""
        return cls(
            smooth=max(2, ramp_steps // 50),
            spike_factor=1.2,
            spike_steps=max(2, ramp_steps // 25),
            plateau_window=max(4, ramp_steps // 5),
            plateau_min_drop=0.01,
            check_after=0.1,
            slow_factor=1.5,
            slow_steps=max(2, ramp_steps // 25),
            plateau_ref_factor=1.1,
        )

    def __post_init__(self) -> None:
        for name in ("smooth", "spike_steps", "plateau_window", "slow_steps"):
            if getattr(self, name) < 1:
                raise KeelError(f"divergence rule {name} must be >= 1, got {getattr(self, name)}")
        for name in ("spike_factor", "slow_factor", "plateau_ref_factor"):
            if getattr(self, name) <= 1:
                raise KeelError(f"divergence rule {name} must be > 1, got {getattr(self, name)}")
        if not 0 <= self.plateau_min_drop < 1 or not 0 <= self.check_after < 1:
            raise KeelError("divergence rules plateau_min_drop and check_after must lie in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Divergence:
    """Where a run diverged: the step, the rule that fired, and the last LR before that step
    (None when it diverged at its first logged point)."""

    step: int
    rule: str
    last_lr: float | None
    detail: str


def smoothed(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` finite values (NaN where none is finite yet)."""
    out, recent = [], []
    for v in values:
        if math.isfinite(v):
            recent.append(v)
            if len(recent) > window:
                recent.pop(0)
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def _first_streak(flags: Sequence[bool], longer_than: int) -> int | None:
    """Index where the first run of more than `longer_than` consecutive True flags begins."""
    start = None
    for i, flag in enumerate(flags):
        if not flag:
            start = None
            continue
        start = i if start is None else start
        if i - start + 1 > longer_than:
            return start
    return None


def _nan(losses: Sequence[float]) -> tuple[int, str] | None:
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            return i, f"loss is {v}"
    return None


def _spike(s: Sequence[float], rules: DivergenceRules) -> tuple[int, str] | None:
    flags, best = [], math.inf
    for v in s:
        best = min(best, v)
        flags.append(v > rules.spike_factor * best)
    i = _first_streak(flags, rules.spike_steps)
    if i is None:
        return None
    floor = min(s[: i + 1])
    return i, (
        f"loss {s[i]:.4g} > {rules.spike_factor:g} x running min {floor:.4g} for more "
        f"than {rules.spike_steps} points"
    )


def _plateau(
    s: Sequence[float], ref: Sequence[float], first: int, rules: DivergenceRules
) -> tuple[int, str] | None:
    w = rules.plateau_window
    best = list(itertools.accumulate(s, min))  # best[i] = min(s[: i + 1])
    above = [
        math.isfinite(r) and v > rules.plateau_ref_factor * r for v, r in zip(s, ref, strict=True)
    ]
    for t in range(first + w - 1, len(s)):  # the window [t - w + 1, t] starts at or after first
        before = best[t - w + 1]  # best up to and including the window's first point
        window = s[t - w + 1 : t + 1]
        if (
            min(window) > (1 - rules.plateau_min_drop) * before
            and max(window) <= rules.spike_factor * before  # higher is the spike rule's
            and all(above[t - w + 1 : t + 1])
        ):
            return t - w + 1, (
                f"no drop of more than {rules.plateau_min_drop:.1%} below "
                f"{before:.4g} over {w} points, above {rules.plateau_ref_factor:g} x reference"
            )
    return None


def _slow(
    s: Sequence[float], ref: Sequence[float], first: int, rules: DivergenceRules
) -> tuple[int, str] | None:
    flags = [
        i >= first and math.isfinite(r) and v > rules.slow_factor * r
        for i, (v, r) in enumerate(zip(s, ref, strict=True))
    ]
    i = _first_streak(flags, rules.slow_steps)
    if i is None:
        return None
    return i, (
        f"loss {s[i]:.4g} > {rules.slow_factor:g} x reference {ref[i]:.4g} for more "
        f"than {rules.slow_steps} points"
    )


def detect_divergence(
    steps: Sequence[int],
    losses: Sequence[float],
    lrs: Sequence[float],
    rules: DivergenceRules = DivergenceRules(),
    reference: Sequence[float] | None = None,
    total_steps: int | None = None,
) -> Divergence | None:
    """The first divergence of a loss curve, or None for a healthy run.

    steps, losses, lrs: one entry per logged point, lrs[i] the LR used at steps[i].
    reference: a loss curve on the same steps (plateau and slow are skipped without one).
    total_steps: the planned length of the run, for check_after (default: the last step + 1),
    so a run cut short by a NaN still skips the same early fraction.
    """
    n = len(steps)
    if len(losses) != n or len(lrs) != n or (reference is not None and len(reference) != n):
        raise KeelError("steps, losses, lrs (and reference) must have one entry per logged point")
    if n == 0:
        return None
    total = total_steps if total_steps is not None else steps[-1] + 1
    first = next((i for i, st in enumerate(steps) if st >= rules.check_after * total), n)
    s = smoothed(losses, rules.smooth)
    found = [("nan", _nan(losses)), ("spike", _spike(s, rules))]
    if reference is not None:
        ref = smoothed(reference, rules.smooth)
        found += [
            ("plateau", _plateau(s, ref, first, rules)),
            ("slow", _slow(s, ref, first, rules)),
        ]
    hits = [(hit[0], rule, hit[1]) for rule, hit in found if hit is not None]
    if not hits:
        return None
    i, rule, detail = min(hits, key=lambda h: h[0])
    return Divergence(
        step=steps[i], rule=rule, last_lr=lrs[i - 1] if i > 0 else None, detail=detail
    )
