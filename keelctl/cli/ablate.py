"""`keelctl ablate-layers`: layer redundancy of runs and transformers models
(docs/ablate-layers.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keelctl.cli.app import command, console


def _layers(picks: list[dict]) -> str:
    """'3 (+0.012), 5 (-0.001)': layer index and its dPPL."""
    return ", ".join(f"{p['layer']} ({p['dppl']:+.3g})" for p in picks)


@command("ablate-layers")
def ablate_layers(
    runs: list[str] = typer.Argument(
        ...,
        metavar="MODEL...",
        help="Run dirs (made by `keelctl train`), transformers model folders or "
        "hf:NAME[@REVISION], mixed freely.",
    ),
    unit: str = typer.Option(
        "sublayer", "--unit", help="sublayer (the paper's 'layers') or block (2 sub-layers)."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Corpus spec to evaluate on instead of each run's validation split "
        "(required for transformers models; each model uses its own tokenizer).",
    ),
    tokens: int = typer.Option(65536, "--tokens", help="Evaluation tokens (seq_len windows)."),
    layers: str | None = typer.Option(
        None, "--layers", help="Layers to remove, in --unit, e.g. '0-7,12'. Default: all."
    ),
    range_size: int = typer.Option(
        1, "--range-size", help="Remove K consecutive layers (in --unit) starting at each layer."
    ),
    output_dir: Path = typer.Option(
        Path("ablation"), "--output-dir", help="Where ablation.csv/.json/.png go."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threshold: float = typer.Option(
        0.01,
        "--threshold",
        help="Relative PPL rise that makes a layer count in the effective depth.",
    ),
    method: str = typer.Option(
        "cached",
        "--method",
        help="cached (prefix state + suffix) or naive (one full pass per layer).",
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="transformers models: float32, bfloat16 or float16."
    ),
    device_map: str | None = typer.Option(
        None, "--device-map", help="transformers models: auto spreads one over every GPU."
    ),
) -> None:
    """Remove one layer at a time and report the perplexity cost (the paper's appendix A)."""
    from keelctl.analysis.ablation import check_options, write_outputs

    check_options(threshold=threshold, output_dir=output_dir)  # ablate() checks the rest
    results = _ablate_with_progress(
        runs,
        unit=unit,
        layers=layers,
        range_size=range_size,
        data=data,
        tokens=tokens,
        batch_size=batch_size,
        device=device,
        method=method,
        dtype=dtype,
        device_map=device_map,
    )
    paths = write_outputs(results, output_dir, threshold)
    _print_summary(results, unit, range_size, threshold)
    console.print("wrote " + ", ".join(str(p) for p in paths))


def _ablate_with_progress(runs: list[str], **options) -> list:
    """ablate(runs, **options) with a progress bar per run."""
    from keelctl.analysis.ablation import ablate

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_step(run: str, done: int, total: int) -> None:
            if run not in tasks:
                tasks[run] = progress.add_task(f"ablating {run}", total=total)
            progress.update(tasks[run], completed=done)

        return ablate(runs, **options, on_step=on_step)


def _print_summary(results: list, unit: str, range_size: int, threshold: float) -> None:
    """The table of effective depths, then each run's most and least redundant layers."""
    from keelctl.analysis.ablation import summarize

    name = "sub-layer" if unit == "sublayer" else "block"
    what = f"{name}s" if range_size == 1 else f"ranges of {range_size} {name}s"
    table = Table(title=f"Layer ablation, unit: {name} (ΔPPL = PPL without it − full PPL)")
    for col in ("run", "scheme", "sub-layers", "full PPL", f"effective depth ({what})", "time"):
        table.add_column(col)
    summaries = [summarize(res, threshold) for res in results]
    for res, s in zip(results, summaries, strict=True):
        depth = f"{s['effective_depth']} of {s['evaluated']}"
        table.add_row(
            res.run,
            res.scheme,
            str(res.n_sublayers),
            f"{s['full_ppl']:.4g}",
            depth,
            f"{res.info['seconds']:.1f}s",
        )
    console.print(table)
    for res, s in zip(results, summaries, strict=True):
        console.print(
            f"[bold]{res.run}[/bold] most redundant {what} (lowest ΔPPL): "
            f"{_layers(s['most_redundant'])}; least redundant: "
            f"{_layers(s['least_redundant'])}"
        )
    console.print(
        f"effective depth: {what} whose removal raises PPL by more than "
        f"{threshold * 100:g}%; {results[0].info['tokens']} tokens per run"
    )
