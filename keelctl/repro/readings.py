"""What the protocols read from a run's record, each number read one way for all of them: the
final validation loss, the stream-gradient level (grad-flow's number), max-lr's LR ramp and its
divergence, and the tie bands their claims use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from keelctl.repro.divergence import Divergence, DivergenceRules, detect_divergence
from keelctl.repro.plan import Outcome, RunSpec
from keelctl.runs import Run

TIE = 0.01  # nats/token
GRAD_TIE = math.log10(1.1)  # decades: ratios within 10% of each other
FROM = 2  # the first sub-layer above the first block
# decades from 1 down to float32's smallest normal number (1.18e-38): a ratio of exactly 0 fell
# at least this far (gradients below it are flushed to zero, torch.set_flush_denormal)
VANISHED = -math.log10(1.1754943508222875e-38)


def select(items: Iterable, **tags) -> list:
    """The items (outcomes, ramp curves: anything with a .spec) whose spec matches every tag
    (scheme=..., depth=...), in order."""
    return [o for o in items if all(getattr(o.spec, k) == v for k, v in tags.items())]


def by(outcomes: Iterable, value, **tags) -> list[float]:
    """value(outcome) of the outcomes select(outcomes, **tags)."""
    return [value(o) for o in select(outcomes, **tags)]


def keel_vs(outcomes: list[Outcome], value, base: str = "pre_ln", **tags) -> tuple[list, list]:
    """by(...) for Keel's runs and for the baseline's, at the same tags."""
    return by(outcomes, value, scheme="keel", **tags), by(outcomes, value, scheme=base, **tags)


def diverged(o: Outcome) -> bool:
    return o.summary.get("status") == "diverged"


def trained(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not diverged(o)]


def finite(value) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def final_loss(o: Outcome) -> float:
    """The final validation loss; +inf for a diverged run (worse than any finite loss, as the
    verdict rule reads it), nan where a finished run has none."""
    if diverged(o):
        return math.inf
    loss = o.summary.get("final_val_loss")
    return math.nan if loss is None else loss


def variant_groups(planned: list[tuple[str, RunSpec]], outcomes: list[Outcome], cell_of) -> dict:
    """design's and precision's recorded runs by cell (cell_of(spec): a depth, or a scheme and
    depth) and variant, both in plan order; a planned variant with no record yet has []."""
    groups: dict = {}
    for variant, spec in planned:
        groups.setdefault(cell_of(spec), {}).setdefault(variant, [])
    variant_of = {spec.run_dir: variant for variant, spec in planned}
    for o in outcomes:
        groups[cell_of(o.spec)][variant_of[o.spec.run_dir]].append(o)
    return groups


def paired_diff(runs: list[Outcome], base: list[Outcome]) -> list[float]:
    """Each run's final loss minus the `base` run's at the same seed: same data order, so most
    of the seed-to-seed noise cancels in the difference."""
    ref = {o.spec.seed: final_loss(o) for o in base}
    return [final_loss(o) - ref[o.spec.seed] for o in runs if o.spec.seed in ref]


def stream_ratio(curve) -> float:
    """A GradCurve's residual-stream gradient ratio, sub-layer FROM / top (nan: too shallow)."""
    s = curve.stream_grad_norm
    return s[FROM] / s[-1] if len(s) > FROM + 1 else math.nan


def grad_level(curve) -> float:
    """|log10 stream_ratio| in decades: 0 = level; VANISHED (a lower bound) when the gradient
    at FROM is exactly 0."""
    r = stream_ratio(curve)
    return VANISHED if r == 0 else abs(math.log10(r))


def grad_level_after(o: Outcome) -> float:
    """grad_level at the record's last grads.csv step; nan (not finite, not missing) for a
    diverged run."""
    from keelctl.analysis.grad_flow import read_grads

    if diverged(o):
        return math.nan
    return grad_level(read_grads(o.record).select(["last"])[0])


def theory_ratio(cfg) -> float:
    """The skip-path gain alone (model/grad_theory.py), sub-layer FROM / top."""
    from keelctl.model.grad_theory import theory_gain

    gain = theory_gain(cfg)
    return gain[FROM] / gain[-1] if len(gain) > FROM + 1 else math.nan


@dataclass
class Curve:
    """A max-lr ramp's per-step training loss and LR, and the divergence found in it."""

    spec: RunSpec
    steps: list[int]
    losses: list[float]
    lrs: list[float]
    found: Divergence | None = None

    @property
    def max_lr(self) -> float:
        """Last LR before divergence; the ramp's last LR when it never diverged."""
        if self.found is None:
            return self.spec.recipe.optim.lr
        return self.found.last_lr if self.found.last_lr is not None else 0.0


def read_curve(o: Outcome) -> Curve:
    """Per-step (step, train loss, lr) from the record's metrics.csv; a step logged twice keeps
    its last value (the NaN guard re-logs the bad step's loss)."""
    spec, run = o.spec, Run(o.record)
    loss_by_step = dict(zip(*run.metric("train_loss"), strict=True))
    lr_by_step = dict(zip(*run.metric("lr"), strict=True))
    steps = sorted(loss_by_step)
    return Curve(
        spec, steps, [loss_by_step[s] for s in steps], [lr_by_step.get(s, math.nan) for s in steps]
    )


def detect_ramps(curves: list[Curve], rules_for: Callable[[int], DivergenceRules]) -> None:
    """Fill each curve's divergence, with the rules rules_for(ramp length). The slow and plateau
    rules' reference is, per step, the lowest finite loss of the curve's group: every scheme's
    ramp at the same depth, seed and length."""
    groups: dict[tuple[int, int, int], list[Curve]] = {}
    for c in curves:
        key = (c.spec.depth, c.spec.seed, c.spec.recipe.trainer.max_steps)
        groups.setdefault(key, []).append(c)
    for (_, _, steps), group in groups.items():
        best: dict[int, float] = {}
        for c in group:
            for step, loss in zip(c.steps, c.losses, strict=True):
                if math.isfinite(loss):
                    best[step] = min(loss, best.get(step, math.inf))
        for c in group:
            c.found = detect_divergence(
                c.steps,
                c.losses,
                c.lrs,
                rules_for(steps),
                reference=[best.get(s, math.nan) for s in c.steps],
                total_steps=steps,
            )
