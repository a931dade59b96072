"""A protocol's plan: the training runs it needs, each a resolved recipe and a run dir; and its
execution, which trains only what is not finished yet.

Run dirs are named `<label>-<recipe hash>`, so two protocols planning the same recipe under the
same runs dir share one run (grad-flow and redundancy reuse depth-sweep's runs), and a changed
recipe never lands in an old run's dir. A run is finished when RUN/summary.json exists (a run
stopped by the NaN guard or by a protocol's early stop writes one too); a run with
checkpoints/last.ckpt but no summary is resumed; a run that died before its first checkpoint
holds nothing worth keeping and starts over.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keelctl.atomic import atomic_write_text
from keelctl.config import RecipeConfig, apply_overrides, dump_recipe, recipe_from_dict
from keelctl.errors import KeelError
from keelctl.repro import records
from keelctl.repro.scales import Scale
from keelctl.runs import (
    CHECKPOINTS,
    CONFIG_YAML,
    FINISHED,
    GRADS_CSV,
    METRICS_CSV,
    RESUMABLE,
    SUMMARY_JSON,
    Run,
)

# on_progress(description, done, total): overall progress of a protocol, in training steps
# (each analysis of a run counts as one more unit).
OnProgress = Callable[[str, int, int], None]
# Keys that do not change what a run computes, left out of the recipe hash.
_HASH_IGNORES = (("name",), ("description",), ("data", "cache_dir"), ("data", "num_workers"))
# What an interrupted `train` may have left in a run dir before its first checkpoint.
_RESTARTABLE = {
    CONFIG_YAML,
    METRICS_CSV,
    GRADS_CSV,
    CHECKPOINTS,
    SUMMARY_JSON,  # a preempted run's, before its first checkpoint
    "hparams.yaml",
    "tensorboard",
}


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
    def finished(self) -> bool:
        """Trained to its end (or stopped by a guard); a preempted run resumes instead."""
        return Run(self.run_dir).state == FINISHED

    def summary(self) -> dict:
        return Run(self.run_dir).summary()


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


def make_spec(label: str, recipe: RecipeConfig, runs_dir: Path) -> RunSpec:
    name = f"{label}-{recipe_hash(recipe)}"
    recipe = recipe.model_copy(update={"name": name})
    m = recipe.model
    return RunSpec(
        recipe, Path(runs_dir) / name, m.residual, m.n_sublayers, recipe.seed, recipe.optim.lr
    )


def unique(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Specs in order, each run dir once (protocols may plan the same run twice)."""
    return list({s.run_dir: s for s in specs}.values())


def write_recipes(specs: Sequence[RunSpec], recipes_dir: Path) -> dict[Path, Path]:
    """Each run's resolved recipe as RECIPES/<run name>.yaml (what `keelctl train` reads)."""
    paths = {}
    for spec in specs:
        path = Path(recipes_dir) / f"{spec.name}.yaml"
        atomic_write_text(path, dump_recipe(spec.recipe))
        paths[spec.run_dir] = path
    return paths


def _check_same_recipe(spec: RunSpec) -> None:
    saved = Run(spec.run_dir).recipe
    if recipe_hash(saved) != recipe_hash(spec.recipe):
        raise KeelError(
            f"run dir {spec.run_dir} holds a run of another recipe than planned; "
            "move it away or pass another --runs-dir"
        )


def _clear_interrupted(run_dir: Path) -> None:
    unknown = sorted(p.name for p in run_dir.iterdir() if p.name not in _RESTARTABLE)
    if unknown:
        raise KeelError(
            f"run dir {run_dir} was interrupted and also holds {', '.join(unknown)}; "
            "move it away or pass another --runs-dir"
        )
    shutil.rmtree(run_dir)


class Progress:
    """Counts a protocol's units (training steps + analyses) and reports them."""

    def __init__(self, total: int, on_progress: OnProgress | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def report(self, description: str, done: int | None = None) -> None:
        if done is not None:
            self.done = done
        if self.on_progress is not None:
            self.on_progress(description, self.done, self.total)


Measure = Callable[[RunSpec], dict]  # a measurement that needs the run's weights


def _train(spec: RunSpec, callbacks: list, on_step: Callable[[int], None] | None) -> None:
    import logging

    from keelctl.repro.callbacks import StepReporter
    from keelctl.train import train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    resume = Run(spec.run_dir).state == RESUMABLE  # _train runs only unfinished runs
    if resume:
        _check_same_recipe(spec)
    elif spec.run_dir.exists():
        _clear_interrupted(spec.run_dir)
    reporter = [StepReporter(on_step)] if on_step else []
    try:
        train(
            spec.recipe,
            spec.run_dir,
            resume=resume,
            progress_bar=False,
            callbacks=[*reporter, *callbacks],
        )
    except KeelError:
        if not spec.finished:  # a real error, not the NaN guard's stop
            raise


def complete(
    spec: RunSpec,
    record: Path,
    measures: dict[str, Measure],
    callbacks: list,
    on_step: Callable[[int], None] | None = None,
) -> str:
    """Train the run unless its run dir holds it finished, then fill its record: the training
    files and every measure it lacks. Returns how the run was had."""
    if spec.finished:
        _check_same_recipe(spec)
        how = "run dir reused"
    else:
        _train(spec, callbacks, on_step)
        records.save_provenance(spec.run_dir)
        how = "trained now"
        if not spec.finished:
            raise KeelError(
                f"run {spec.name} was preempted; run the same command again to resume it"
            )
    records.save_training(spec.run_dir, record)
    for name, measure in measures.items():
        if not (record / f"{name}.json").is_file():
            Run(record).save_measure(name, measure(spec))
    return how


def _complete_in_worker(args) -> str:
    import torch

    torch.set_flush_denormal(True)  # a vanishing gradient fills CPU tensors with subnormals
    return complete(*args)


def execute(
    specs: Sequence[RunSpec],
    progress: Progress,
    out: Path,
    measures: dict[str, Measure],
    callbacks: Callable[[RunSpec], list] = lambda spec: [],
    jobs: int = 1,
    may_train: Callable[[RunSpec], bool] = lambda spec: True,
) -> tuple[list[Outcome], list[RunSpec]]:
    """Every planned run's Outcome, from its record when one holds what the protocol needs,
    else from its run dir (training it if unfinished, `jobs` runs at a time in separate
    processes) and then recorded. Returns (outcomes in plan order, runs still missing: those
    `may_train` refused and no finished run dir holds, for a report from what is there)."""
    had: dict[Path, tuple[Path, str]] = {}
    todo = []
    for spec in specs:
        record = records.adopt(out, spec.name, tuple(measures))
        if record is not None:
            had[spec.run_dir] = (record, "from record")
        elif may_train(spec) or spec.finished:  # a finished run dir is only measured
            todo.append(spec)
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        with pool:
            futures = {
                pool.submit(
                    _complete_in_worker,
                    (s, records.record_dir(out, s.name), measures, callbacks(s)),
                ): s
                for s in todo
            }
            for future in as_completed(futures):
                spec = futures[future]
                had[spec.run_dir] = (records.record_dir(out, spec.name), future.result())
                progress.report(
                    f"finished {spec.name}", progress.done + spec.recipe.trainer.max_steps
                )
    else:
        for spec in todo:
            base = progress.done
            how = complete(
                spec,
                records.record_dir(out, spec.name),
                measures,
                callbacks(spec),
                lambda step, base=base, spec=spec: progress.report(
                    f"training {spec.name}", base + step
                ),
            )
            had[spec.run_dir] = (records.record_dir(out, spec.name), how)
            progress.report(f"finished {spec.name}", base + spec.recipe.trainer.max_steps)
    outcomes = [
        Outcome(s, had[s.run_dir][0], Run(had[s.run_dir][0]).summary(), had[s.run_dir][1])
        for s in specs
        if s.run_dir in had
    ]
    return outcomes, [s for s in specs if s.run_dir not in had]
