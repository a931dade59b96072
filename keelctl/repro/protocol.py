"""Running a protocol: plan -> write recipes -> train what is unfinished -> analyse -> report.

    from keelctl.repro import run_protocol
    report_md = run_protocol("depth-sweep", scale="cpu", seeds=1, out="repro/depth-sweep")

Each protocol module (max_lr, sweeps, analyses, ...) defines Protocol records (context.py): a
`plan` (the runs it needs, from the scale) and an `analyse` (tables, figures and verdicts into
the Report, through the analysis commands' own functions); PROTOCOLS below lists them. A
protocol module imports only the shared ones (context, readings, figures, paper, plan, report,
verdicts), never another protocol.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from keelctl.errors import KeelError
from keelctl.repro import (
    analyses,
    design,
    hops,
    max_lr,
    precision,
    redundancy,
    scale_map,
    sweeps,
    tuned,
)
from keelctl.repro.context import Context, Protocol
from keelctl.repro.measures import measures_for
from keelctl.repro.plan import (
    OnProgress,
    Outcome,
    Progress,
    RunSpec,
    execute,
    unique,
    write_recipes,
)
from keelctl.repro.records import RECORDS
from keelctl.repro.report import Report, machine, md_table, rel
from keelctl.repro.scales import get_scale
from keelctl.repro.verdicts import __doc__ as VERDICT_RULE
from keelctl.runs import config_hash

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
    sc = get_scale(scale)
    out = Path(out)
    return Context(
        protocol,
        sc,
        [sc.seed + i for i in range(seeds)],
        out,
        Path(runs_dir) if runs_dir is not None else out / "runs",
        list(overrides),
        lrs=list(lrs) if lrs is not None else None,
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


def repro_command(ctx: Context) -> str:
    args = [
        "keelctl",
        "repro",
        ctx.protocol,
        "--scale",
        ctx.scale.name,
        "--seeds",
        str(len(ctx.seeds)),
        "--out",
        str(ctx.out),
        "--runs-dir",
        str(ctx.runs_dir),
    ]
    for item in ctx.overrides:
        args += ["--set", item]
    return shlex.join(args)


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
    progress = Progress(sum(s.recipe.trainer.max_steps for s in specs) + len(specs), on_progress)
    callbacks = proto.callbacks(ctx) if proto.callbacks else (lambda spec: [])
    outcomes, missing, done = [], [], set()
    while more := [s for s in specs if s.run_dir not in done]:  # a staged plan (tuned) grows
        new_outcomes, new_missing = execute(  # with the records of its last stage
            more,
            progress,
            ctx.out,
            measures_for(proto.measures, ctx.scale),
            callbacks,
            jobs=jobs,
            may_train=lambda s: train and (not depths or s.depth in depths),
        )
        outcomes += new_outcomes
        missing += new_missing
        done |= {s.run_dir for s in more}
        specs = unique([*specs, *plan_protocol(ctx)])
        added = [s for s in specs if s.run_dir not in done]
        recipe_paths |= write_recipes(added, ctx.out / "recipes")
        progress.total += sum(s.recipe.trainer.max_steps + 1 for s in added)
    trained_s = time.perf_counter() - started
    report = Report(ctx.out, f"keelctl repro {protocol}: {proto.title}", proto.claim)
    if missing:
        report.add(_missing_note(ctx, missing))
    analysis_started = time.perf_counter()
    proto.analyse(ctx, outcomes, report, progress)
    analysis_s = time.perf_counter() - analysis_started
    _runs_section(ctx, report, outcomes, recipe_paths)
    report.section(
        "Rules",
        "How each verdict is decided (keelctl/repro/verdicts.py):",
        "```text\n" + VERDICT_RULE.strip() + "\n```",
        f"How this protocol measures ({proto.analyse.__module__.replace('.', '/')}.py):",
        "```text\n" + (sys.modules[proto.analyse.__module__].__doc__ or "").strip() + "\n```",
    )
    timing = dict(
        trained_s=trained_s, analysis_s=analysis_s, load=(load_at_start, os.getloadavg()[0])
    )
    _setup_section(ctx, report, outcomes, timing)
    return report.write()


def _missing_note(ctx: Context, missing: list[RunSpec]) -> str:
    rows = [(s.name, s.scheme, s.depth, s.seed, f"{s.lr:g}") for s in missing]
    return (
        f"**Partial report: {len(missing)} planned run(s) have no record yet**, so every "
        "table, figure and verdict below uses only the recorded runs (n per group is shown). "
        f"Missing (complete them with `{repro_command(ctx)}`):\n\n"
        + md_table(("missing run", "scheme", "sub-layers", "seed", "lr"), rows)
    )


def _runs_section(
    ctx: Context, report: Report, outcomes: list[Outcome], recipe_paths: dict[Path, Path]
) -> None:
    rows = []
    for o in outcomes:
        s, spec = o.summary, o.spec
        rows.append(
            (
                spec.name,
                spec.scheme,
                spec.depth,
                spec.seed,
                f"{spec.lr:g}",
                f"{s.get('steps')}/{s.get('max_steps')}",
                s.get("status"),
                config_hash(spec.recipe.model),
                f"{s.get('wall_time_s', 0):.0f} s",
                o.how,
            )
        )
    report.section(
        "Runs",
        f"Run dirs under `{ctx.runs_dir}`, compact records under "
        f"`{rel(ctx.out / RECORDS, ctx.out)}/` (what every number here is computed from); depth "
        "in sub-layers; config hash = keelctl.runs.config_hash of the model config; train "
        "time from each summary.json.",
        md_table(
            (
                "run",
                "scheme",
                "sub-layers",
                "seed",
                "lr",
                "steps",
                "status",
                "config hash",
                "train time",
                "this invocation",
            ),
            rows,
        ),
    )
    lines = [repro_command(ctx), "", "# the same, one command at a time:"]
    lines += [
        shlex.join(
            [
                "keelctl",
                "train",
                str(recipe_paths[o.spec.run_dir]),
                "--run-dir",
                str(o.spec.run_dir),
            ]
        )
        for o in outcomes
    ]
    lines += ctx.commands
    report.section(
        "Commands",
        "Exact commands (paths as given to `keelctl repro`); the "
        f"recipes are in `{rel(ctx.out / 'recipes', ctx.out)}/`.",
        "```bash\n" + "\n".join(lines) + "\n```",
    )


def _setup_section(ctx: Context, report: Report, outcomes: list[Outcome], timing: dict) -> None:
    trained_s, analysis_s = timing["trained_s"], timing["analysis_s"]
    train_total = sum(o.summary.get("wall_time_s", 0.0) for o in outcomes)
    fresh = sum(o.trained_now for o in outcomes)
    scale = ctx.scale.model_dump()
    report.section(
        "Setup",
        f"Scale `{ctx.scale.name}`, seeds {ctx.seeds}, overrides {ctx.overrides or 'none'}.",
        f"Wall time: this invocation trained {fresh} of {len(outcomes)} runs in "
        f"{trained_s:.0f} s and analysed in {analysis_s:.0f} s; the runs' own training time "
        f"(summary.json, all runs) totals {train_total:.0f} s, so the protocol from scratch "
        f"takes about {train_total + analysis_s:.0f} s here. 1-minute load average "
        f"{timing['load'][0]:.1f} at the start and {timing['load'][1]:.1f} at the end (other "
        "processes on the machine slow every timing here).",
        f"Machine: {machine()}.",
        f"The scale, as data (keelctl/repro/scale_recipes/{ctx.scale.name}.yaml):",
        "```text\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in scale.items()) + "\n```",
    )
