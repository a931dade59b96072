"""The shared Typer app, the error mapping and the consoles every command uses."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer
from rich.console import Console

from keelctl import __version__
from keelctl.errors import KeelError

app = typer.Typer(
    name="keelctl",
    help="Train, evaluate and analyse very deep Keel and Pre-LN Transformer LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) has no terminal width: rich would assume 80 columns and cut tables.
console = Console() if sys.stdout.isatty() else Console(width=160)


def fail(message: str) -> typer.Exit:
    """Print one line to stderr and return the exit to raise (code 2)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code=2)


def command(name: str, **kwargs) -> Callable:
    """Register a command whose KeelError turns into one line and exit code 2."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kw):
            try:
                return fn(*args, **kw)
            except KeelError as e:
                raise fail(str(e)) from None

        app.command(name, **kwargs)(run)
        return fn

    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"keelctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, evaluate and analyse very deep Keel and Pre-LN Transformer LMs.

    Depth is counted in sub-layers (the paper's "layers": one attention or one FFN) unless a
    command says blocks (one block = 2 sub-layers)."""
