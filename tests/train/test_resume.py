"""--resume continues a stopped run exactly: per-step losses equal an uninterrupted run's."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.train import train


def columns(path, *names):
    with open(path, newline="") as f:
        return [{n: r.get(n, "") for n in ("step", *names)} for r in csv.DictReader(f)]


def test_stop_at_20_then_resume_to_40_equals_uninterrupted_40(
    stop_after, tmp_path, tiny_recipe, tiny_args
):
    recipe = tiny_recipe(max_steps=40)
    train(recipe, tmp_path / "straight", progress_bar=False)
    stopped = train(recipe, tmp_path / "resumed", progress_bar=False, callbacks=[stop_after(20)])
    assert stopped["status"] == "stopped" and stopped["steps"] == 20

    result = CliRunner().invoke(
        app, ["train", *tiny_args(max_steps=40), "--run-dir", str(tmp_path / "resumed"), "--resume"]
    )
    assert result.exit_code == 0, result.output + result.stderr

    def losses(run):
        rows = columns(tmp_path / run / "metrics.csv", "train_loss", "val_loss", "lr")
        return [(r["step"], r["train_loss"], r["val_loss"], r["lr"]) for r in rows]

    straight, resumed = losses("straight"), losses("resumed")
    assert len(straight) == len(resumed) == 40 + 4  # every step's row and 4 validations
    for a, b in zip(straight, resumed, strict=True):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:], strict=True):
            assert (x == y == "") or abs(float(x) - float(y)) <= 1e-6, (a, b)

    # The gradient records of the two parts join up without repeats as well.
    grads = [
        columns(tmp_path / r / "grads.csv", "sublayer", "param_grad_norm")
        for r in ("straight", "resumed")
    ]
    assert grads[0] == grads[1]

    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] == 20
    assert summary["tokens_seen"] == 40 * 4 * 32


def test_finished_at_20_then_resumed_to_40_numbers_each_step_once(tmp_path, tiny_args):
    """A finished 20-step run resumed with --max-steps 40: rows 0..39 once each, numbered as
    the step they trained, in metrics.csv and grads.csv; the resumed steps' LR is the 40-step
    schedule's (an uninterrupted 40-step run's)."""
    runner = CliRunner()
    for run, steps, extra in (
        ("straight", 40, []),
        ("resumed", 20, []),
        ("resumed", 40, ["--resume"]),
    ):
        args = [
            "train",
            *tiny_args("trainer.val_every=50", max_steps=steps),
            "--run-dir",
            str(tmp_path / run),
            *extra,
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    rows = columns(tmp_path / "resumed" / "metrics.csv", "train_loss", "lr")
    trained = [int(r["step"]) for r in rows if r["train_loss"] != ""]
    assert trained == list(range(40))
    straight = {
        r["step"]: r["lr"]
        for r in columns(tmp_path / "straight" / "metrics.csv", "lr")
        if r["lr"] != ""
    }
    resumed = {r["step"]: r["lr"] for r in rows if r["lr"] != ""}
    for step in range(20, 40):
        assert abs(float(resumed[str(step)]) - float(straight[str(step)])) <= 1e-12, step
    grads = columns(tmp_path / "resumed" / "grads.csv", "sublayer")
    pairs = [(r["step"], r["sublayer"]) for r in grads]
    assert len(pairs) == len(set(pairs))
