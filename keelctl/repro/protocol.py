"""Running a protocol: plan -> write recipes -> train what is unfinished -> analyse -> report.

    from keelctl.repro import run_protocol
    report_md = run_protocol("depth-sweep", scale="cpu", seeds=1, out="repro/depth-sweep")

Each protocol module (max_lr, sweeps, analyses) registers a Protocol: a `plan` (the runs it
needs, from the scale) and an `analyse` (tables, figures and verdicts into the Report, through
the analysis commands' own functions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keelctl.errors import KeelError
from keelctl.repro.plan import (
    OnProgress,
    Outcome,
    Progress,
    RunSpec,
    execute,
    make_recipe,
    make_spec,
    unique,
    write_recipes,
)
from keelctl.repro.report import Report, machine, md_table, rel
from keelctl.repro.scales import Scale, get_scale
from keelctl.repro.verdicts import __doc__ as VERDICT_RULE
from keelctl.runs import config_hash


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

    def recipe(self, **kw):
        return make_recipe(self.scale, self.overrides, **kw)

    def spec(self, label: str, recipe) -> RunSpec:
        return make_spec(label, recipe, self.runs_dir)


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    claim: str
    plan: Callable[[Context], list[RunSpec]]
    analyse: Callable[[Context, list[Outcome], Report, Progress], None]
    analysis_units: Callable[[list[RunSpec]], int] = len
    callbacks: Callable[[Context], Callable[[RunSpec], list]] | None = None


PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _protocols() -> dict[str, Protocol]:
    from keelctl.repro import analyses, max_lr, sweeps  # noqa: F401  (each registers itself)

    return PROTOCOLS


def get_protocol(name: str) -> Protocol:
    protocols = _protocols()
    if name not in protocols:
        raise KeelError(f"unknown protocol {name!r}; use one of {', '.join(protocols)}")
    return protocols[name]


def make_context(
    protocol: str,
    scale: str = "cpu",
    seeds: int = 1,
    out: str | Path = "repro",
    runs_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Context:
    get_protocol(protocol)
    if seeds < 1:
        raise KeelError(f"--seeds must be at least 1, got {seeds}")
    sc = get_scale(scale)
    out = Path(out)
    return Context(
        protocol,
        sc,
        [sc.seed + i for i in range(seeds)],
        out,
        Path(runs_dir) if runs_dir is not None else out / "runs",
        list(overrides),
    )


def plan_protocol(ctx: Context) -> list[RunSpec]:
    """The protocol's runs, each once, recipes resolved (nothing is written)."""
    return unique(get_protocol(ctx.protocol).plan(ctx))


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
) -> Path:
    """Train what the protocol's plan lacks, analyse, and write OUT/report.md (returned)."""
    ctx = make_context(protocol, scale, seeds, out, runs_dir, overrides)
    proto = get_protocol(protocol)
    specs = plan_protocol(ctx)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    recipe_paths = write_recipes(specs, ctx.out / "recipes")
    todo = sum(s.recipe.trainer.max_steps for s in specs if not s.finished)
    progress = Progress(todo + proto.analysis_units(specs), on_progress)
    callbacks = proto.callbacks(ctx) if proto.callbacks else (lambda spec: [])
    outcomes = execute(specs, progress, callbacks)
    trained_s = time.perf_counter() - started
    report = Report(ctx.out, f"keelctl repro {protocol}: {proto.title}", proto.claim)
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
                "trained now" if o.trained_now else "reused",
            )
        )
    report.section(
        "Runs",
        f"Run dirs under `{ctx.runs_dir}`; depth in sub-layers; config hash = "
        "keelctl.runs.config_hash of the model config; train time from each summary.json.",
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
    scale = dataclasses.asdict(ctx.scale)
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
        "The scale, as data (keelctl/repro/scales.py):",
        "```text\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in scale.items()) + "\n```",
    )
