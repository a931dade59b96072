"""Fixtures for `keelctl repro`: micro-scale overrides onto the tiny corpus, and one shared runs
dir in which depth-sweep trains once for grad-flow and redundancy to reuse."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def micro_overrides(tiny_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("repro-cache")
    return [f"data.corpus={tiny_corpus}", f"data.cache_dir={cache}", "data.val_fraction=0.1"]


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("repro-runs")


@pytest.fixture(scope="module")
def depth_sweep_report(tmp_path_factory, micro_overrides, shared_runs):
    """depth-sweep at micro scale through the CLI; returns (report.md, the CLI result)."""
    from typer.testing import CliRunner

    from keelctl.cli import app

    out = tmp_path_factory.mktemp("repro-out") / "depth-sweep"
    args = [
        "repro",
        "depth-sweep",
        "--scale",
        "micro",
        "--out",
        str(out),
        "--runs-dir",
        str(shared_runs),
    ]
    for item in micro_overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    return out / "report.md", result
