"""The Typer app: the front door. Each command lives in its own module and calls one function
below the CLI; KeelError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import importlib

import typer

from keelctl.cli.app import app

# Importing a command module registers its command on `app`, in this order in --help.
for _command_module in (
    "prepare",
    "train",
    "evaluate",
    "generate",
    "export",
    "ablate",
    "grads",
    "bench",
    "repro",
):
    importlib.import_module(f"keelctl.cli.{_command_module}")


def main() -> None:
    """Console entry point: usage mistakes get one line and exit 2, like every other error."""
    try:
        result = app(standalone_mode=False)
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        if e.format_message():  # empty when no arguments were given and help was shown
            typer.echo(f"error: {e.format_message()} (see keelctl --help)", err=True)
        raise SystemExit(2) from None
    except typer.Abort:
        raise SystemExit(130) from None
    # Without standalone mode click returns the exit code of typer.Exit, or the command's value.
    raise SystemExit(result if isinstance(result, int) else 0)


__all__ = ["app", "main"]
