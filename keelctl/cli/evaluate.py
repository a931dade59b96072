"""`keelctl eval`: held-out perplexity and lm-eval tasks for run dirs (docs/eval.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.table import Table

from keelctl.cli.app import command, console


@command("eval")
def eval_command(
    runs: list[Path] = typer.Argument(..., help="Run dirs (made by `keelctl train`)."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Corpus spec whose validation split is scored "
        "(default: each run's own validation split).",
    ),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Comma-separated lm-eval tasks, e.g. keel_offline (the bundled "
        "offline tasks) or hellaswag,arc_easy (need the Hugging Face hub or its cache).",
    ),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples."),
    limit: float | None = typer.Option(
        None, "--limit", help="At most N examples per task (a fraction if < 1)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    output: Path | None = typer.Option(None, "--output", help="Write the results JSON here."),
) -> None:
    """Perplexity and bits per byte on held-out text, plus lm-eval tasks: a column per run."""
    from keelctl.eval.harness import parse_tasks
    from keelctl.eval.runner import evaluate_runs, summary_rows

    for name in ("lm_eval", "lm-eval"):  # the table says it all
        logging.getLogger(name).setLevel(logging.ERROR)
    report = evaluate_runs(
        runs,
        data=data,
        tasks=parse_tasks(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        output=output,
    )
    table = Table(
        "",
        *(Path(r["model_path"]).name for r in report["runs"]),
        title=f"keelctl eval ({report['settings']['device']})",
    )
    for label, cells in summary_rows(report):
        table.add_row(label, *cells)
    console.print(table)
    if output is not None:
        console.print(f"wrote {output}")
