"""metrics.csv contents beyond the loss, the loss-curve figure, and compare-runs errors."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.train.curves import loss_curves, read_metric


def test_metrics_count_tokens_and_throughput(trained_run_dir):
    with open(trained_run_dir / "metrics.csv", newline="") as f:
        train_rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    assert [float(r["tokens"]) for r in train_rows] == [(s + 1) * 4 * 32 for s in range(40)]
    rates = [r["tokens_per_s"] for r in train_rows]
    assert rates[:19] == [""] * 19  # a 20-step window fills first
    assert all(float(r) > 0 for r in rates[19:])
    assert all(float(r["lr"]) > 0 for r in train_rows)


def test_loss_curves_draw_train_and_val_per_run(trained_run_dir):
    metrics = trained_run_dir / "metrics.csv"
    fig = loss_curves({"a": metrics, "b": metrics}, smooth=5)
    train_ax, val_ax = fig.axes
    assert [line.get_label() for line in train_ax.get_lines()] == ["a", "b"]
    steps, losses = train_ax.get_lines()[0].get_data()
    assert list(steps) == list(range(40))
    assert (
        losses[0] == read_metric(metrics, "train_loss")[1][0]
    )  # smoothing starts at the first point
    assert list(val_ax.get_lines()[0].get_xdata()) == [9, 19, 29, 39]


def test_read_metric_of_a_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(KeelError, match="keelctl train"):
        read_metric(tmp_path / "metrics.csv", "train_loss")


def test_compare_runs_of_an_unfinished_dir_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["compare-runs", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "summary.json is missing" in result.stderr
