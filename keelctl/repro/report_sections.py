"""The sections every protocol's report ends with (Runs, Commands, Rules, Setup) and the
partial-report note: what the executor (protocol.py) knows of the plan and its outcomes, written
into the Report (report.py, which knows nothing of plans).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from keelctl.repro.plan import Context, Outcome, RunSpec
from keelctl.repro.records import RECORDS
from keelctl.repro.report import Report, md_table, rel
from keelctl.repro.verdicts import __doc__ as VERDICT_RULE
from keelctl.runs import config_hash


def machine() -> str:
    import torch

    from keelctl import __version__

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"keelctl {__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({torch.get_num_threads()} torch threads), {device}; "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}"
    )


def repro_command(ctx: Context) -> str:
    args = ["keelctl", "repro", ctx.protocol, "--scale", ctx.scale.name]
    args += ["--seeds", str(len(ctx.seeds)), "--out", str(ctx.out), "--runs-dir", str(ctx.runs_dir)]
    for item in ctx.overrides:
        args += ["--set", item]
    return shlex.join(args)


def missing_note(ctx: Context, missing: list[RunSpec]) -> str:
    rows = [(s.name, s.scheme, s.depth, s.seed, f"{s.lr:g}") for s in missing]
    return (
        f"**Partial report: {len(missing)} planned run(s) have no record yet**, so every "
        "table, figure and verdict below uses only the recorded runs (n per group is shown). "
        f"Missing (complete them with `{repro_command(ctx)}`):\n\n"
        + md_table("missing run | scheme | sub-layers | seed | lr", rows)
    )


def runs_sections(
    report: Report, ctx: Context, outcomes: list[Outcome], recipe_paths: dict[Path, Path]
) -> None:
    """The Runs table (each run's tags, status and how this invocation had it) and the exact
    Commands that redo the protocol."""
    rows = []
    for o in outcomes:
        s, spec = o.summary, o.spec
        tags = (spec.name, spec.scheme, spec.depth, spec.seed, f"{spec.lr:g}")
        steps, hash_ = f"{s.get('steps')}/{s.get('max_steps')}", config_hash(spec.recipe.model)
        rows.append(
            (*tags, steps, s.get("status"), hash_, f"{s.get('wall_time_s', 0):.0f} s", o.how)
        )
    columns = "run | scheme | sub-layers | seed | lr | steps | status | config hash | train time"
    report.section(
        "Runs",
        f"Run dirs under `{ctx.runs_dir}`, compact records under "
        f"`{rel(ctx.out / RECORDS, ctx.out)}/` (what every number here is computed "
        "from); depth in sub-layers; config hash = keelctl.runs.config_hash of the model config; "
        "train time from each summary.json.",
        md_table(columns + " | this invocation", rows),
    )
    lines = [repro_command(ctx), "", "# the same, one command at a time:"]
    for o in outcomes:
        recipe, run_dir = str(recipe_paths[o.spec.run_dir]), str(o.spec.run_dir)
        lines.append(shlex.join(["keelctl", "train", recipe, "--run-dir", run_dir]))
    report.section(
        "Commands",
        "Exact commands (paths as given to `keelctl repro`); the "
        f"recipes are in `{rel(ctx.out / 'recipes', ctx.out)}/`.",
        "```bash\n" + "\n".join(lines + ctx.commands) + "\n```",
    )


def rules_section(report: Report, module: str) -> None:
    """The verdict rule (verdicts.py's docstring) and how the protocol measures (its module's)."""
    report.section(
        "Rules",
        "How each verdict is decided (keelctl/repro/verdicts.py):",
        "```text\n" + VERDICT_RULE.strip() + "\n```",
        f"How this protocol measures ({module.replace('.', '/')}.py):",
        "```text\n" + (sys.modules[module].__doc__ or "").strip() + "\n```",
    )


def setup_section(report: Report, ctx: Context, outcomes: list[Outcome], timing: tuple) -> None:
    """Scale, seeds, timing (timing: seconds trained, seconds analysed, (load at the start, at
    the end)), machine and the scale's settings."""
    trained_s, analysis_s, load = timing
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
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (other "
        "processes on the machine slow every timing here).",
        f"Machine: {machine()}.",
        f"The scale, as data (keelctl/repro/scale_recipes/{ctx.scale.name}.yaml):",
        "```text\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in scale.items()) + "\n```",
    )
