"""What a protocol plans: the invocation's Context, the Protocol record each protocol module
defines, its runs (RunSpec: a resolved recipe and a run dir) and what came of each (Outcome),
and the runs several protocols plan alike (one name per run, so they share run dirs and records).

Run dirs are named `<label>-<recipe hash>`, so two protocols planning the same recipe under the
same runs dir share one run (grad-flow and redundancy reuse depth-sweep's runs), and a changed
recipe never lands in an old run's dir. protocol.py executes a plan; the end of this module
estimates what it costs (`--plan`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keelctl.config import RecipeConfig, apply_overrides, recipe_from_dict
from keelctl.errors import KeelError
from keelctl.repro import records
from keelctl.repro.report import Report
from keelctl.repro.scales import Scale
from keelctl.runs import FINISHED, Run

# on_progress(description, done, total): overall progress of a protocol, in training steps
# (each analysis of a run counts as one more unit).
OnProgress = Callable[[str, int, int], None]
# Keys that do not change what a run computes, left out of the recipe hash.
_HASH_IGNORES = (("name",), ("description",), ("data", "cache_dir"), ("data", "num_workers"))


def _what_counts(data: dict, defaults: dict) -> dict:
    """The entries of `data` that differ from `defaults`, recursively; a section switched off
    (enabled: false) counts as its `enabled` alone, since its other settings do nothing."""
    out = {}
    for key, value in data.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            if value.get("enabled") is False:
                value = {"enabled": False}
                default = {"enabled": default.get("enabled")}
            value = _what_counts(value, default)
            if value:
                out[key] = value
        elif value != default:
            out[key] = value
    return out


def recipe_hash(recipe: RecipeConfig) -> str:
    """8 hex digits naming what a recipe computes: its values that differ from the schema's
    defaults (names and cache paths left out). A key added to the schema later, at a default
    that changes nothing, keeps old runs' names; a changed default does not, since a saved
    config.yaml holds the old value explicitly."""
    data = _what_counts(recipe.model_dump(mode="json"), RecipeConfig().model_dump(mode="json"))
    for path in _HASH_IGNORES:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RunSpec:
    """One planned training run and the tags the protocol's analysis groups it by."""

    recipe: RecipeConfig
    run_dir: Path
    scheme: str
    depth: int  # sub-layers
    seed: int
    lr: float

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def steps(self) -> int:
        return self.recipe.trainer.max_steps

    @property
    def finished(self) -> bool:
        """Trained to its end (or stopped by a guard); a preempted run resumes instead."""
        return Run(self.run_dir).state == FINISHED


@dataclass
class Outcome:
    """A finished run as the analyses see it: its compact record (records.py), its summary, and
    how this invocation got it ("trained now", "run dir reused" or "from record")."""

    spec: RunSpec
    record: Path
    summary: dict
    how: str

    @property
    def trained_now(self) -> bool:
        return self.how == "trained now"


class Progress:
    """Counts a protocol's units (training steps + analyses) and reports them."""

    def __init__(self, total: int, on_progress: OnProgress | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def report(self, description: str, done: int | None = None) -> None:
        if done is not None:
            self.done = done
        if self.on_progress is not None:
            self.on_progress(description, self.done, self.total)


@dataclass
class Context:
    """Everything a protocol's plan and analysis need to know about this invocation."""

    protocol: str
    scale: Scale
    seeds: list[int]
    out: Path
    runs_dir: Path
    overrides: list[str]
    commands: list[str] = field(default_factory=list)  # analysis commands, for the report
    lrs: list[float] | None = None  # tuned's LR grid (--lrs); None: the scale's


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    claim: str
    plan: Callable[[Context], list[RunSpec]]
    analyse: Callable[[Context, list[Outcome], Report, Progress], None]
    measures: tuple[str, ...] = ()  # measures.py: per-run measurements kept in each record
    callbacks: Callable[[Context], Callable[[RunSpec], list]] | None = None
    # a staged plan's runs still to be chosen from its records (stand-ins for --plan's cost)
    pending: Callable[[Context], list[RunSpec]] | None = None


def make_recipe(
    scale: Scale,
    overrides: Sequence[str],
    *,
    scheme: str,
    depth: int,
    seed: int,
    lr: float,
    steps: int,
    warmup_steps: int,
    **sections: dict,
) -> RecipeConfig:
    """The scale's base recipe with this run's scheme, depth, seed and schedule, then the extra
    `sections` (e.g. trainer=dict(val_every=...)), then the user's --set overrides."""
    if depth < 2 or depth % 2:
        raise KeelError(f"depth {depth} sub-layers is not a positive even number (2 per block)")
    data = copy.deepcopy(scale.recipe)
    data["seed"] = seed
    data.setdefault("model", {}).update(residual=scheme, n_blocks=depth // 2)
    data.setdefault("optim", {}).update(lr=lr, warmup_steps=warmup_steps)
    data.setdefault("trainer", {}).update(max_steps=steps)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return recipe_from_dict(apply_overrides(data, list(overrides)), f"--scale {scale.name}")


def run_spec(ctx: Context, label: str, **recipe_args) -> RunSpec:
    """The run `label` of make_recipe(ctx's scale and overrides, **recipe_args), under
    ctx.runs_dir as `<label>-<recipe hash>`."""
    recipe = make_recipe(ctx.scale, ctx.overrides, **recipe_args)
    name = f"{label}-{recipe_hash(recipe)}"
    recipe = recipe.model_copy(update={"name": name})
    m, lr = recipe.model, recipe.optim.lr
    return RunSpec(recipe, ctx.runs_dir / name, m.residual, m.n_sublayers, recipe.seed, lr)


def unique(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Specs in order, each run dir once (protocols may plan the same run twice)."""
    return list({s.run_dir: s for s in specs}.values())


SCHEMES = ("pre_ln", "keel")  # Keel and its baseline: the sweeps, redundancy and hops


def train_spec(
    ctx: Context, scheme: str, depth: int, seed: int, lr: float, steps: int, name: str, **sections
) -> RunSpec:
    """A sweep run: warm-up 10% of steps, then cosine; `sections` add recipe keys (e.g.
    model=dict(alpha=1.0), design's variants)."""
    schedule = dict(lr=lr, steps=steps, warmup_steps=max(1, steps // 10))
    return run_spec(ctx, name, scheme=scheme, depth=depth, seed=seed, **schedule, **sections)


def sweep_spec(ctx: Context, scheme: str, depth: int, steps: int, seed: int, lr: float) -> RunSpec:
    """A sweep run over `steps`, one name per scheme, depth, LR and seed at the sweep's own steps:
    lr-sweep, depth-sweep (and the protocols that plan its runs), scale-map and tuned share the
    runs they have in common (same name and recipe, so the same run dir)."""
    name = f"{scheme}-L{depth}-lr{lr:g}-s{seed}"
    if steps != ctx.scale.steps:
        name = f"{scheme}-L{depth}-lr{lr:g}-steps{steps}-s{seed}"
    return train_spec(ctx, scheme, depth, seed, lr, steps, name)


def depth_sweep_specs(ctx: Context, schemes=SCHEMES) -> list[RunSpec]:
    """The depth-sweep's runs; grad-flow, redundancy, design and precision plan the same ones
    (and share them). Seed before scheme: a sweep cut short leaves complete pairs."""
    sc = ctx.scale
    return [
        sweep_spec(ctx, scheme, depth, sc.steps, seed, sc.lr)
        for depth in sc.depths
        for seed in ctx.seeds
        for scheme in schemes
    ]


def variant_run(ctx: Context, scheme: str, depth: int, seed: int, keys: dict, name: str) -> RunSpec:
    """depth-sweep's run with the model `keys` set, as `name`; with no keys, depth-sweep's run
    itself (same name, run dir and record): design's and precision's variants and baseline."""
    sc = ctx.scale
    if not keys:
        return sweep_spec(ctx, scheme, depth, sc.steps, seed, sc.lr)
    return train_spec(ctx, scheme, depth, seed, sc.lr, sc.steps, name, model=keys)


def ramp_spec(ctx: Context, scheme: str, depth: int, seed: int, steps: int) -> RunSpec:
    """max-lr's run: its LR ramps linearly from 0 to the scale's peak over all its `steps`; at
    max-lr's own ramp length it is max-lr's run (scale-map shares it)."""
    name = f"maxlr-{scheme}-L{depth}-s{seed}"
    if steps != ctx.scale.max_lr_steps:
        name = f"maxlr-{scheme}-L{depth}-steps{steps}-s{seed}"
    schedule = dict(lr=ctx.scale.max_lr_peak, steps=steps, warmup_steps=steps)
    trainer = dict(log_every=1, val_every=steps, grad_flow_every=0)
    return run_spec(ctx, name, scheme=scheme, depth=depth, seed=seed, **schedule, trainer=trainer)


def set_flags(keys: dict) -> str:
    """A variant's model keys (design, precision) as `keelctl train` options: --set
    model.alpha=8.0 ("(none)": depth-sweep's run itself)."""

    def text(v) -> str:
        return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else v

    return " ".join(f"--set model.{k}={text(v)}" for k, v in keys.items()) or "(none)"


# ---- the --plan estimate --------------------------------------------------------------------
# Seconds each planned run still costs, from one measured constant per scale
# (Scale.step_s_per_sublayer: a training step's seconds per sub-layer, one torch thread, quiet
# machine) and the work each measure does. An upper bound for max-lr (runs that diverge stop
# early). A forward pass is taken as a third of a training step (backward ~ 2 forwards). The
# constant is a quiet machine's; the runs a protocol recorded say what its machine really did
# (validation, gradient flow, `--jobs` runs sharing cores), so `--plan` also states the plan at
# the recorded runs' median rate (`recorded_rate`).

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
    return scale.step_s_per_sublayer * spec.depth * spec.steps


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
