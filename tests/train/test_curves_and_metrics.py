"""metrics.csv contents beyond the loss, the loss and eval curve figure, compare-runs' eval
scores, and compare-runs errors."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.runs import Run
from keelctl.train.curves import loss_curves


def test_metrics_count_tokens_and_throughput(trained_run_dir):
    with open(trained_run_dir / "metrics.csv", newline="") as f:
        train_rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    assert [float(r["tokens"]) for r in train_rows] == [(s + 1) * 4 * 32 for s in range(40)]
    rates = [r["tokens_per_s"] for r in train_rows]
    assert rates[:19] == [""] * 19  # a 20-step window fills first
    assert all(float(r) > 0 for r in rates[19:])
    assert all(float(r["lr"]) > 0 for r in train_rows)


def test_loss_curves_draw_train_and_val_per_run(trained_run_dir):
    run = Run(trained_run_dir)
    fig = loss_curves({"a": run, "b": run}, smooth=5)
    train_ax, val_ax = fig.axes
    assert [line.get_label() for line in train_ax.get_lines()] == ["a", "b"]
    steps, losses = train_ax.get_lines()[0].get_data()
    assert list(steps) == list(range(40))
    assert losses[0] == run.metric("train_loss")[1][0]  # smoothing starts at the first point
    assert list(val_ax.get_lines()[0].get_xdata()) == [9, 19, 29, 39]


ACC, ACC_NORM = "eval/keel_nextline/acc", "eval/keel_nextline/acc_norm"
EVAL_SCORES = {9: (0.30, 0.34), 19: (0.42, 0.40), 39: (0.60, 0.56)}  # row step: (acc, acc_norm)


@pytest.fixture
def evaluated_run(trained_run_dir, tmp_path):
    """trained_run_dir's summary and metrics.csv plus rows of in-training evaluations of
    keel_nextline as the callback logs them (eval/seconds beside; a failed one at row 29)."""
    run = tmp_path / "evaluated"
    run.mkdir()
    summary = json.loads((trained_run_dir / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "name": "evaluated"}))
    with open(trained_run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [*rows[0], ACC, ACC_NORM, "eval/seconds", "eval/failed"]
    for step, (acc, acc_norm) in EVAL_SCORES.items():
        rows.append({"step": step, ACC: acc, ACC_NORM: acc_norm, "eval/seconds": 1.5})
        if step == 19:
            rows.append({"step": 29, "eval/failed": 1.0, "eval/seconds": 0.1})
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return run


def test_loss_curves_add_a_panel_per_eval_metric(trained_run_dir, evaluated_run):
    fig = loss_curves({"evaluated": Run(evaluated_run), "plain": Run(trained_run_dir)})
    train_ax, val_ax, acc_ax, norm_ax = fig.axes  # eval/seconds and eval/failed: no panels
    assert acc_ax.get_title() == "keel_nextline acc (in-training eval)"
    assert norm_ax.get_title() == "keel_nextline acc_norm (in-training eval)"
    (acc_line,) = acc_ax.get_lines()  # the run without evaluations has no line there
    assert acc_line.get_label() == "evaluated"
    assert acc_line.get_color() == train_ax.get_lines()[0].get_color()
    assert list(acc_line.get_xdata()) == list(EVAL_SCORES)
    assert list(acc_line.get_ydata()) == [acc for acc, _ in EVAL_SCORES.values()]
    assert list(norm_ax.get_lines()[0].get_ydata()) == [norm for _, norm in EVAL_SCORES.values()]
    assert acc_ax.get_xlim() == train_ax.get_xlim()  # the rows line up step for step


def test_compare_runs_shows_and_plots_the_eval_scores(trained_run_dir, evaluated_run, tmp_path):
    png = tmp_path / "curves.png"
    runs = [str(evaluated_run), str(trained_run_dir)]
    result = CliRunner().invoke(app, ["compare-runs", *runs, "--plot", str(png)])
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "final val" in line)
    assert "keel_nextline acc " in header and "keel_nextline acc_norm" in header
    assert "seconds" not in header and "failed" not in header
    evaluated = next(line for line in lines if line.strip().startswith("evaluated")).split()
    plain = next(line for line in lines if line.strip().startswith("tiny-keel-test")).split()
    assert evaluated[-4:-2] == ["0.6000", "0.5600"]  # the last scores, before the time
    assert plain[-4:-2] == ["-", "-"]
    assert "last in-training eval score" in result.stdout
    assert png.stat().st_size > 10_000


def test_read_metric_of_a_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(KeelError, match="keelctl train"):
        Run(tmp_path).metric("train_loss")


def test_compare_runs_of_an_unfinished_dir_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["compare-runs", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "summary.json is missing" in result.stderr
