"""`keelctl repro PROTOCOL`: one of the paper's protocols end to end, ending in a report
(docs/repro.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from keelctl.cli.app import command, console


@command("repro")
def repro(
    protocol: str = typer.Argument(
        ..., help="max-lr, lr-sweep, depth-sweep, grad-flow or redundancy."
    ),
    scale: str = typer.Option("cpu", "--scale", help="micro (tests), cpu or gpu (paper shapes)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per configuration (mean ± std if > 1)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Report folder, and run dirs unless --runs-dir (default: repro/PROTOCOL-SCALE).",
    ),
    runs_dir: Path | None = typer.Option(
        None,
        "--runs-dir",
        help="Where run dirs go (default: OUT/runs); share it to reuse runs across "
        "protocols (grad-flow and redundancy reuse depth-sweep's).",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key of every run's recipe, e.g. data.corpus=PATH."
    ),
    plan_only: bool = typer.Option(
        False, "--plan", help="Print the runs and recipes it would train; train nothing."
    ),
) -> None:
    """Run one of the paper's protocols: train what is missing, analyse, write OUT/report.md."""
    from keelctl.repro import make_context, plan_protocol, run_protocol

    out = out or Path("repro") / f"{protocol}-{scale}"
    ctx = make_context(protocol, scale, seeds, out, runs_dir, overrides)
    if plan_only:
        table = Table(title=f"repro {protocol} --scale {scale}: plan (depth in sub-layers)")
        for col in (
            "run dir",
            "scheme",
            "sub-layers",
            "seed",
            "lr",
            "steps",
            "tokens/step",
            "done",
        ):
            table.add_column(col)
        for spec in plan_protocol(ctx):
            r = spec.recipe
            per_step = r.sequences_per_step
            table.add_row(
                str(spec.run_dir),
                spec.scheme,
                str(spec.depth),
                str(spec.seed),
                f"{spec.lr:g}",
                str(r.trainer.max_steps),
                f"{per_step * r.data.seq_len:,}" if per_step else "auto",
                "yes" if spec.finished else "no",
            )
        console.print(table)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"repro {protocol}", total=None)

        def on_progress(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done, total=max(total, 1))

        report = run_protocol(protocol, scale, seeds, out, runs_dir, overrides, on_progress)
    lines = report.read_text().splitlines()
    console.print(next((line for line in lines if line.startswith("**Verdicts")), ""))
    console.print(f"report: {report}")
