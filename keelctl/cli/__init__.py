"""The Typer app: the front door. Each command lives in its own module and calls one function
below the CLI; KeelError becomes one line on stderr and exit code 2."""

from __future__ import annotations

from keelctl.cli.app import app


def _register_commands() -> None:
    # Importing a command module registers it on `app`.
    import importlib

    for name in ("train", "evaluate", "ablate", "grads", "bench", "repro"):
        try:
            importlib.import_module(f"keelctl.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"keelctl.cli.{name}":
                raise


_register_commands()


def main() -> None:
    app()


__all__ = ["app", "main"]
