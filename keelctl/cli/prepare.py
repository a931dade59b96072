"""`keelctl prepare`: tokenize a recipe's corpus once into a token store (docs/data.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from keelctl.cli.app import command, console


@command("prepare")
def prepare_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML; its data section names the corpus."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a recipe key: --set data.tokenizer=gpt2 (repeat for more)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Tokenizer processes (default: the usable CPU cores)."
    ),
) -> None:
    """Tokenize the recipe's corpus into a token store of shards + manifest (resumable)."""
    from keelctl.config import load_recipe
    from keelctl.data import prepare_data_section

    cfg = load_recipe(recipe, overrides)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TextColumn("{task.fields[tokens_per_s]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reading the corpus", total=None, tokens_per_s="")

        def on_progress(phase: str, done: int, total: int | None, tokens: int) -> None:
            rate = tokens / max(time.monotonic() - started, 1e-9)
            shown = f"{rate / 1e6:.2f} M tokens/s" if tokens else ""
            progress.update(
                task, description=phase, completed=done, total=total, tokens_per_s=shown
            )

        data = prepare_data_section(
            cfg.data,
            workers=workers,
            progress=on_progress,
            max_vocab_size=cfg.model.vocab_size,
        )
    console.print(store_table(data.meta, data.path))


def store_table(manifest: dict, path: Path) -> Table:
    tok = manifest["tokenizer"]
    name = tok["kind"] + (f" {tok['source']}" if tok.get("source") else "")
    table = Table(
        "split", "documents", "MB of text", "tokens", "shards",
        title=f"token store {path}\n{name}, {tok['vocab_size']} ids, {manifest['dtype']}",
    )  # fmt: skip
    for split, stats in manifest["splits"].items():
        table.add_row(
            split,
            f"{stats['docs']:,}",
            f"{stats['bytes'] / 1e6:,.1f}",
            f"{stats['tokens']:,}",
            str(len(stats["shards"])),
        )
    return table
