"""Every mistake gets one line on stderr and exit code 2, no traceback, and no run left behind."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from keelctl.cli import app

RECIPE_CASES = {
    "unknown key": (["model.n_layers=4"], "unknown key 'model.n_layers'; allowed here:"),
    "wrong type": (
        ["trainer.max_steps=many"],
        "'trainer.max_steps': Input should be a valid integer",
    ),
    "lr zero": (["optim.lr=0"], "'optim.lr': Input should be greater than 0"),
    "lr negative": (["optim.lr=-1e-3"], "'optim.lr': Input should be greater than 0"),
    "no blocks": (
        ["model.n_blocks=0"],
        "'model.n_blocks': Input should be greater than or equal to 1",
    ),
    "alpha zero": (["model.alpha=0"], "'model.alpha': Input should be greater than 0"),
    "seq_len too long": (["data.seq_len=128"], "data.seq_len 128 exceeds model.max_seq_len 64"),
    "bad precision": (
        ["trainer.precision=16"],
        "'trainer.precision': Input should be '32' or 'bf16-mixed'",
    ),
    "set without value": (["data.corpus"], "--set expects key.path=value"),
}


def invoke(args):
    result = CliRunner().invoke(app, ["train", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


@pytest.mark.parametrize("sets,expected", RECIPE_CASES.values(), ids=RECIPE_CASES.keys())
def test_bad_recipe_value(sets, expected, tiny_args, tmp_path):
    run = tmp_path / "run"
    assert expected in invoke([*tiny_args(*sets), "--run-dir", str(run)])
    assert not run.exists()


def test_missing_recipe(tmp_path):
    message = invoke([str(tmp_path / "nope.yaml")])
    assert "nope.yaml not found" in message


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [64\n")
    assert "is not valid YAML at line" in invoke([str(bad)])


@pytest.mark.parametrize(
    "corpus,expected", [("empty-dir", "has no text"), ("missing", "does not exist")]
)
def test_bad_corpus(corpus, expected, tiny_args, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    run = tmp_path / "run"
    message = invoke([*tiny_args(f"data.corpus={tmp_path / corpus}"), "--run-dir", str(run)])
    assert expected in message
    assert not run.exists()


def test_unwritable_run_dir(tiny_args, tmp_path):
    (tmp_path / "a-file").write_text("")
    message = invoke([*tiny_args(), "--run-dir", str(tmp_path / "a-file" / "run")])
    assert "is not writable" in message and "--run-dir" in message


def test_existing_run_is_not_clobbered(trained_run_dir, tiny_args):
    before = (trained_run_dir / "metrics.csv").read_text()
    message = invoke([*tiny_args(), "--run-dir", str(trained_run_dir)])
    assert "already holds a run" in message and "--resume" in message
    assert (trained_run_dir / "metrics.csv").read_text() == before


def test_resume_without_checkpoint(tiny_args, tmp_path):
    message = invoke([*tiny_args(), "--run-dir", str(tmp_path / "new"), "--resume"])
    assert "no checkpoint at" in message


def test_resume_with_a_different_recipe(trained_run_dir, tiny_args):
    args = tiny_args("optim.lr=1e-3", max_steps=40)
    message = invoke([*args, "--run-dir", str(trained_run_dir), "--resume"])
    assert "differs from the checkpoint's in optim.lr" in message


def test_resume_of_a_finished_run_asks_for_more_steps(trained_run_dir, tiny_args):
    args = tiny_args(max_steps=40)
    message = invoke([*args, "--run-dir", str(trained_run_dir), "--resume"])
    assert "already reached step 40" in message and "--max-steps" in message


def test_resume_from_a_truncated_checkpoint(tiny_args, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    message = invoke([*tiny_args(), "--run-dir", str(tmp_path / "run"), "--resume"])
    assert f"cannot read checkpoint {ckpt}" in message and "truncated" in message
