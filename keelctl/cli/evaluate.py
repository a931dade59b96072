"""`keelctl eval`: held-out perplexity and lm-eval tasks for run dirs (docs/eval.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.table import Table

from keelctl.cli.app import command, console


@command("eval")
def eval_command(
    runs: list[str] = typer.Argument(
        ...,
        metavar="MODEL...",
        help="Run dirs (made by `keelctl train`), transformers model folders or "
        "hf:NAME[@REVISION], mixed freely.",
    ),
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
    dtype: str = typer.Option(
        "float32", "--dtype", help="transformers models: float32, bfloat16 or float16."
    ),
    device_map: str | None = typer.Option(
        None, "--device-map", help="transformers models: auto spreads one over every GPU."
    ),
    checkpoints: str | None = typer.Option(
        None,
        "--checkpoints",
        help="Score the step checkpoints the run dirs kept (trainer.keep_checkpoints): 'all' "
        "or steps such as 1000,2000; a row per run and step, and a figure against tokens "
        "(OUTPUT.png, default eval-checkpoints.png).",
    ),
) -> None:
    """Perplexity and bits per byte on held-out text, plus lm-eval tasks: a column per run."""
    from keelctl.eval.harness import parse_tasks
    from keelctl.eval.runner import evaluate_runs, summary_rows

    for name in ("lm_eval", "lm-eval"):  # the table says it all
        logging.getLogger(name).setLevel(logging.ERROR)
    if checkpoints is not None:
        options = dict(data=data, tasks=parse_tasks(tasks), num_fewshot=num_fewshot, limit=limit)
        options.update(batch_size=batch_size, device=device, output=output)
        _eval_checkpoints([Path(r) for r in runs], checkpoints, options)
        return
    report = evaluate_runs(
        runs,
        data=data,
        tasks=parse_tasks(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        output=output,
        dtype=dtype,
        device_map=device_map,
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


def _eval_checkpoints(runs: list[Path], checkpoints: str, options: dict) -> None:
    from keelctl.eval.checkpoints import (
        checkpoints_figure,
        evaluate_checkpoints,
        table_rows,
        write_figure,
    )

    output = options["output"]
    figure = output.with_suffix(".png") if output is not None else Path("eval-checkpoints.png")
    report = evaluate_checkpoints(runs, checkpoints, **options)
    header, rows = table_rows(report)
    table = Table(*header, title=f"keelctl eval --checkpoints ({report['settings']['device']})")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    write_figure(checkpoints_figure(report["rows"]), figure)
    console.print(f"wrote {figure}" + (f" and {output}" if output is not None else ""))
