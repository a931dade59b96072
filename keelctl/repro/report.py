"""DIR/report.md: verdicts, results (tables and figures), runs, exact commands, rules, setup.

Written by the tool from the data; figures are PNGs beside report.md, linked relatively.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from keelctl.atomic import atomic_path, atomic_write_text
from keelctl.repro.records import RECORDS
from keelctl.repro.verdicts import NO_DATA, NOT_AT_SCALE, OPPOSITE, REPRODUCED, Verdict
from keelctl.repro.verdicts import __doc__ as VERDICT_RULE
from keelctl.runs import config_hash

if TYPE_CHECKING:  # plan.py imports this module
    from keelctl.repro.plan import Context, Outcome, RunSpec

REPORT_MD = "report.md"


def md_table(headers: str | Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; `headers` may be given as its header line, "a | b | c"."""
    if isinstance(headers, str):
        headers = headers.split(" | ")

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def verdict_line(verdicts: Sequence[Verdict]) -> str:
    """'Verdicts: 2 reproduced, 1 not at this scale, 0 opposite (of 3 claims).', with
    ', 4 no data yet' before the total when a partial sweep left claims without runs."""
    kinds = (REPRODUCED, NOT_AT_SCALE, OPPOSITE)
    counts = {k: sum(v.verdict.startswith(k) for v in verdicts) for k in kinds}
    if any(v.verdict == NO_DATA for v in verdicts):
        counts[NO_DATA] = sum(v.verdict == NO_DATA for v in verdicts)
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"**Verdicts: {parts} (of {len(verdicts)} claims).**"


def rel(path: Path, start: Path) -> str:
    """`path` relative to `start` when possible (links inside the report dir stay valid)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


class Report:
    """Collects a protocol's verdicts and result blocks, then renders report.md."""

    def __init__(self, out_dir: Path, title: str, claim: str):
        self.out_dir, self.title, self.claim = Path(out_dir), title, claim
        self.verdicts: list[Verdict] = []
        self.results: list[str] = []
        self.sections: dict[str, list[str]] = {}

    def add(self, *blocks: str) -> None:
        self.results.extend(blocks)

    def figure(self, fig: Figure, filename: str, caption: str) -> Path:
        path = self.out_dir / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        self.add(f"![{caption}]({filename})\n\n*{caption}*")
        return path

    def section(self, heading: str, *blocks: str) -> None:
        self.sections.setdefault(heading, []).extend(blocks)

    def render(self) -> str:
        verdict_rows = [
            (v.claim, v.paper, v.ours, f"**{v.verdict}**", v.rule) for v in self.verdicts
        ]
        parts = [
            f"# {self.title}",
            verdict_line(self.verdicts),
            f"Claim under test: {self.claim}",
            "## Verdicts",
            md_table(("claim", "paper", "ours", "verdict", "rule applied"), verdict_rows),
            "## Results",
            *self.results,
        ]
        for heading, blocks in self.sections.items():
            parts += [f"## {heading}", *blocks]
        return "\n\n".join(parts) + "\n"

    def write(self) -> Path:
        path = self.out_dir / REPORT_MD
        atomic_write_text(path, self.render())
        return path


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


# ---- the sections every protocol's report ends with -----------------------------------------


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
