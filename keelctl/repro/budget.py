"""The `--plan` estimate: seconds each planned run still costs, from one measured constant per
scale (Scale.step_s_per_sublayer: a training step's seconds per sub-layer, one torch thread,
quiet machine) and the work each measure does. An upper bound for max-lr (runs that diverge
stop early). A forward pass is taken as a third of a training step (backward ~ 2 forwards).
"""

from __future__ import annotations

from keelctl.repro import records
from keelctl.repro.plan import RunSpec
from keelctl.repro.scales import Scale

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


def run_s(scale: Scale, spec: RunSpec, out, measures: tuple[str, ...]) -> float | None:
    """Seconds this run still needs (0 when records hold all of it); None: no estimate."""
    if scale.step_s_per_sublayer is None:
        return None
    no_training, lacking = records.missing(out, spec.name, measures)
    retrain = bool(no_training or lacking) and not spec.finished  # measures need weights
    seconds = scale.step_s_per_sublayer * spec.depth * spec.recipe.trainer.max_steps
    return retrain * seconds + sum(measure_s(scale, spec, m) for m in lacking)
