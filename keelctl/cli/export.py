"""`keelctl export`: a run as a Hugging Face transformers folder (docs/export.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from keelctl.cli.app import command, console

FORMATS = ("hf",)


@command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run dir (made by `keelctl train`)."),
    format: str = typer.Option("hf", "--format", help="hf: a transformers model folder."),
    output: Path = typer.Option(..., "--output", help="The folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output folder."),
) -> None:
    """Write a trained run in a format other tools load (AutoModelForCausalLM, lm_eval)."""
    from keelctl.errors import KeelError
    from keelctl.export import export_hf
    from keelctl.sources.keel import trained_context

    if format not in FORMATS:
        raise KeelError(f"--format {format!r} is not supported; use one of {', '.join(FORMATS)}")
    path = export_hf(run, output, context=trained_context(run), force=force)
    console.print(
        f"wrote {path}: load it with AutoModelForCausalLM.from_pretrained('{path}', "
        "trust_remote_code=True)"
    )
