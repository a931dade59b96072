"""The executor: plan -> write recipes -> train what is unfinished -> record -> analyse -> report.

    from keelctl.repro import run_protocol
    report_md = run_protocol("depth-sweep", scale="cpu", seeds=1, out="repro/depth-sweep")

Each protocol module (max_lr, sweeps, analyses, ...) defines Protocol records (plan.py): a `plan`
(the runs it needs, from the scale) and an `analyse` (tables, figures and verdicts into the
Report, through the analysis commands' own functions); PROTOCOLS below lists them. A protocol
module imports only the shared ones (plan, readings, figures, paper, report, verdicts), never
another protocol.

A planned run is had from its record (records.py) when one holds what the protocol measures, else
from its run dir: a finished one is only measured; an unfinished one is trained with
train(resume="auto"), which resumes it from checkpoints/last.ckpt; a run that died before its
first checkpoint holds nothing worth keeping and starts over. A run is finished when
RUN/summary.json says so (a run stopped by the NaN guard or a protocol's early stop writes one).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from keelctl.atomic import atomic_write_text
from keelctl.config import dump_recipe
from keelctl.errors import KeelError
from keelctl.repro import (
    analyses,
    design,
    hops,
    max_lr,
    precision,
    records,
    redundancy,
    scale_map,
    sweeps,
    tuned,
)
from keelctl.repro.measures import Measure, measures_for
from keelctl.repro.plan import (
    Context,
    OnProgress,
    Outcome,
    Progress,
    Protocol,
    RunSpec,
    recipe_hash,
    unique,
)
from keelctl.repro.report import Report
from keelctl.repro.report_sections import (
    missing_note,
    rules_section,
    runs_sections,
    setup_section,
)
from keelctl.repro.scales import get_scale
from keelctl.runs import CHECKPOINTS, CONFIG_YAML, GRADS_CSV, METRICS_CSV, SUMMARY_JSON, Run

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        max_lr.MAX_LR_PROTOCOL,
        sweeps.LR_SWEEP_PROTOCOL,
        sweeps.DEPTH_SWEEP_PROTOCOL,
        analyses.GRAD_FLOW_PROTOCOL,
        redundancy.REDUNDANCY_PROTOCOL,
        scale_map.SCALE_MAP_PROTOCOL,
        design.DESIGN_PROTOCOL,
        precision.PRECISION_PROTOCOL,
        hops.HOPS_PROTOCOL,
        tuned.TUNED_PROTOCOL,
    )
}
# What a `train` killed before its first checkpoint may have left in a run dir (summary.json: a
# run preempted before it; hparams.yaml, tensorboard: Lightning's loggers), and nothing else.
_RESTARTABLE = {CONFIG_YAML, METRICS_CSV, GRADS_CSV, CHECKPOINTS, SUMMARY_JSON}
_RESTARTABLE |= {"hparams.yaml", "tensorboard"}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeelError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def make_context(
    protocol: str,
    scale: str = "cpu",
    seeds: int = 1,
    out: str | Path = "repro",
    runs_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    lrs: Sequence[float] | None = None,
) -> Context:
    get_protocol(protocol)
    if seeds < 1:
        raise KeelError(f"--seeds must be at least 1, got {seeds}")
    if lrs is not None and protocol != "tuned":
        raise KeelError(f"--lrs is the LR grid of repro tuned; drop it for {protocol}")
    sc, out = get_scale(scale), Path(out)
    runs = Path(runs_dir) if runs_dir is not None else out / "runs"
    grid = list(lrs) if lrs is not None else None
    return Context(
        protocol, sc, [sc.seed + i for i in range(seeds)], out, runs, [*overrides], lrs=grid
    )


def plan_protocol(ctx: Context) -> list[RunSpec]:
    """The protocol's runs, each once, recipes resolved (nothing is written)."""
    return unique(get_protocol(ctx.protocol).plan(ctx))


def check_depths(specs: Sequence[RunSpec], depths: Sequence[int] | None) -> None:
    """--depths names only depths that the plan has."""
    unknown = sorted(set(depths or ()) - {s.depth for s in specs})
    if unknown:
        raise KeelError(
            f"--depths {unknown} not in this plan; use some of {sorted({s.depth for s in specs})}"
        )


def write_recipes(specs: Sequence[RunSpec], recipes_dir: Path) -> dict[Path, Path]:
    """Each run's resolved recipe as RECIPES/<run name>.yaml (what `keelctl train` reads)."""
    paths = {}
    for spec in specs:
        paths[spec.run_dir] = path = Path(recipes_dir) / f"{spec.name}.yaml"
        atomic_write_text(path, dump_recipe(spec.recipe))
    return paths


# ---- one run: train what is unfinished, then fill its record --------------------------------


def _check_same_recipe(spec: RunSpec) -> None:
    if recipe_hash(Run(spec.run_dir).recipe) != recipe_hash(spec.recipe):
        raise KeelError(
            f"run dir {spec.run_dir} holds a run of another recipe than planned; "
            "move it away or pass another --runs-dir"
        )


def _train(spec: RunSpec, callbacks: list, on_step: Callable[[int], None] | None) -> None:
    """train(resume="auto") on an unfinished run: it resumes a run with a checkpoint (of this
    very recipe) and starts a new one; a run killed before its first checkpoint starts over."""
    import logging

    from lightning.pytorch.callbacks import LambdaCallback

    from keelctl.train import train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if Run(spec.run_dir).last_checkpoint.exists():
        _check_same_recipe(spec)
    elif spec.run_dir.exists():
        unknown = sorted(p.name for p in spec.run_dir.iterdir() if p.name not in _RESTARTABLE)
        if unknown:
            raise KeelError(
                f"run dir {spec.run_dir} was interrupted and also holds {', '.join(unknown)}; "
                "move it away or pass another --runs-dir"
            )
        shutil.rmtree(spec.run_dir)

    def step_done(trainer, *args) -> None:
        on_step(trainer.global_step)  # after every optimizer step

    reporter = [LambdaCallback(on_train_batch_end=step_done)] if on_step else []
    try:
        train(
            spec.recipe,
            spec.run_dir,
            resume="auto",
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
        Run(spec.run_dir).save_provenance(records.provenance())  # the record copies it
        how = "trained now"
        if not spec.finished:
            raise KeelError(
                f"run {spec.name} was preempted; run the same command again to resume it"
            )
    records.save_training(spec.run_dir, record)
    for name, measure in measures.items():
        if not Run(record).has_measure(name):
            Run(record).save_measure(name, measure(spec))
    return how


def _complete_in_worker(args) -> str:
    import torch

    torch.set_flush_denormal(True)  # a vanishing gradient fills CPU tensors with subnormals
    return complete(*args)


def _complete_all(
    todo: list[RunSpec],
    progress: Progress,
    out: Path,
    measures: dict[str, Measure],
    callbacks: Callable[[RunSpec], list],
    jobs: int,
) -> Iterator[tuple[RunSpec, str]]:
    """complete() each run of `todo`, `jobs` at a time in worker processes (else here, reporting
    every step); yields (spec, how) as each ends, with progress.done where the run started."""
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        # A fresh process per run: glibc keeps a finished run's freed activations (about
        # 10 GB after a 1024-sub-layer run), and the next run in the same worker added its own.
        pool = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1
        )
        with pool:
            futures = {
                pool.submit(
                    _complete_in_worker,
                    (s, records.record_dir(out, s.name), measures, callbacks(s)),
                ): s
                for s in todo
            }
            for future in as_completed(futures):
                try:
                    how = future.result()
                except BrokenProcessPool:
                    raise KeelError(
                        f"a worker process died while training {futures[future].name} (killed,"
                        " e.g. out of memory: see dmesg); finished runs are recorded, the others"
                        " resume from their last checkpoint when you run the same command"
                        " again, with fewer --jobs if memory ran out"
                    ) from None
                yield futures[future], how
        return
    for spec in todo:
        base = progress.done

        def on_step(step: int, base=base, spec=spec) -> None:
            progress.report(f"training {spec.name}", base + step)

        how = complete(spec, records.record_dir(out, spec.name), measures, callbacks(spec), on_step)
        progress.done = base
        yield spec, how


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
    had: dict[Path, str] = {}
    todo = []
    for spec in specs:
        if records.adopt(out, spec.name, tuple(measures)) is not None:
            had[spec.run_dir] = "from record"
        elif may_train(spec) or spec.finished:  # a finished run dir is only measured
            todo.append(spec)
    for spec, how in _complete_all(todo, progress, out, measures, callbacks, jobs):
        had[spec.run_dir] = how
        progress.report(f"finished {spec.name}", progress.done + spec.steps)
    outcomes = []
    for s in (s for s in specs if s.run_dir in had):
        record = records.record_dir(out, s.name)
        outcomes.append(Outcome(s, record, Run(record).summary(), had[s.run_dir]))
    return outcomes, [s for s in specs if s.run_dir not in had]


# ---- the protocol: execute its plan, analyse, report ----------------------------------------


def run_protocol(
    protocol: str,
    scale: str = "cpu",
    seeds: int = 1,
    out: str | Path = "repro",
    runs_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    on_progress: OnProgress | None = None,
    jobs: int = 1,
    train: bool = True,
    depths: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
) -> Path:
    """Complete what the protocol's records lack (training `jobs` runs at a time; with
    train=False nothing, with `depths` only runs at those depths), analyse what is recorded,
    and write OUT/report.md (returned), which lists the planned runs still missing."""
    ctx = make_context(protocol, scale, seeds, out, runs_dir, overrides, lrs)
    proto = get_protocol(protocol)
    if jobs < 1:
        raise KeelError(f"--jobs must be at least 1, got {jobs}")
    specs = plan_protocol(ctx)
    check_depths(specs, depths)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    recipe_paths = write_recipes(specs, ctx.out / "recipes")
    progress = Progress(sum(s.steps for s in specs) + len(specs), on_progress)
    callbacks = proto.callbacks(ctx) if proto.callbacks else (lambda spec: [])
    measures = measures_for(proto.measures, ctx.scale)

    def may_train(spec: RunSpec) -> bool:
        return train and (not depths or spec.depth in depths)

    outcomes, missing, done = [], [], set()
    while more := [s for s in specs if s.run_dir not in done]:  # a staged plan (tuned) grows
        got, lacking = execute(more, progress, ctx.out, measures, callbacks, jobs, may_train)
        outcomes, missing = outcomes + got, missing + lacking
        done |= {s.run_dir for s in more}
        specs = unique([*specs, *plan_protocol(ctx)])  # with the records of its last stage
        added = [s for s in specs if s.run_dir not in done]
        recipe_paths |= write_recipes(added, ctx.out / "recipes")
        progress.total += sum(s.steps + 1 for s in added)
    trained_s = time.perf_counter() - started
    report = Report(ctx.out, f"keelctl repro {protocol}: {proto.title}", proto.claim)
    if missing:
        report.add(missing_note(ctx, missing))
    analysis_started = time.perf_counter()
    proto.analyse(ctx, outcomes, report, progress)
    analysis_s = time.perf_counter() - analysis_started
    runs_sections(report, ctx, outcomes, recipe_paths)
    rules_section(report, proto.analyse.__module__)
    load = (load_at_start, os.getloadavg()[0])
    setup_section(report, ctx, outcomes, (trained_s, analysis_s, load))
    return report.write()
