"""The `--plan` estimate: seconds each planned run still costs, from one measured constant per
scale (Scale.step_s_per_sublayer: a training step's seconds per sub-layer, one torch thread,
quiet machine) and the work each measure does. An upper bound for max-lr (runs that diverge
stop early). A forward pass is taken as a third of a training step (backward ~ 2 forwards).

The constant is a quiet machine's; the runs a protocol recorded say what its machine really did
(validation, gradient flow, `--jobs` runs sharing cores), so `--plan` also states the plan at the
recorded runs' median rate (`recorded_rate`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from keelctl.repro import records
from keelctl.repro.plan import RunSpec
from keelctl.repro.scales import Scale
from keelctl.runs import Run

# lm-eval keel_nextline: tokens scored per document (3 choices of a short line), generous
_TASK_TOKENS_PER_DOC = 3 * 160


def _forward_s(scale: Scale, spec: RunSpec, tokens: int) -> float:
    batch_tokens = spec.recipe.data.batch_size * spec.recipe.data.seq_len
    return scale.step_s_per_sublayer * spec.depth * tokens / batch_tokens / 3


def measure_s(scale: Scale, spec: RunSpec, measure: str) -> float:
    if measure == "eval":
        docs = scale.task_limit or 1000
        heldout = scale.heldout_tokens or spec.recipe.data.val_tokens
        tokens = 2 * heldout + docs * _TASK_TOKENS_PER_DOC  # rolling windows: stride L/2
        return _forward_s(scale, spec, tokens)
    if measure == "ablation":
        L = spec.depth
        removals = L + L // 2 + 8  # single, blocks, ranges; each runs about half the stack
        return _forward_s(scale, spec, scale.ablation_tokens) * (1 + removals / 2)
    return 0.0


def _train_s(scale: Scale, spec: RunSpec) -> float:
    return scale.step_s_per_sublayer * spec.depth * spec.recipe.trainer.max_steps


def run_s(scale: Scale, spec: RunSpec, out, measures: tuple[str, ...]) -> float | None:
    """Seconds this run still needs (0 when records hold all of it); None: no estimate."""
    if scale.step_s_per_sublayer is None:
        return None
    no_training, lacking = records.missing(out, spec.name, measures)
    retrain = bool(no_training or lacking) and not spec.finished  # measures need weights
    return retrain * _train_s(scale, spec) + sum(measure_s(scale, spec, m) for m in lacking)


def scratch_s(scale: Scale, spec: RunSpec, measures: tuple[str, ...]) -> float:
    """Seconds this run costs with no record and no run dir: training and every measure."""
    return _train_s(scale, spec) + sum(measure_s(scale, spec, m) for m in measures)


def recorded_rate(out: Path, specs: Sequence[RunSpec]) -> tuple[float, int] | None:
    """(median seconds per training step per sub-layer, number of runs) over the planned runs
    that `out`'s records hold, from their own wall time; None when none is recorded. A resumed
    run's wall time counts only its last part, so it is left out."""
    rates = []
    for spec in specs:
        record = records.record_dir(out, spec.name)
        if not records.has(record):
            continue
        summary = Run(record).summary()
        if summary.get("resumed_from_step") is None and summary.get("steps", 0) > 0:
            rates.append(summary["wall_time_s"] / (summary["steps"] * spec.depth))
    return (statistics.median(rates), len(rates)) if rates else None
