"""The front door: help, version, and the error mapping every command relies on."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from keelctl import __version__
from keelctl.cli import app


def test_help_lists_commands_and_version_prints():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "keelctl" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"keelctl {__version__}"


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "keelctl", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout


def test_usage_errors_from_the_console_script_are_one_line_exit_2():
    for argv in (["train"], ["bench", "--steps", "many"], ["no-such-command"]):
        out = subprocess.run(
            [sys.executable, "-m", "keelctl", *argv], capture_output=True, text=True
        )
        assert out.returncode == 2, argv
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
