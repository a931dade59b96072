"""`keelctl eval RUN... --checkpoints all|STEPS`: the kept step checkpoints scored into one table
and a figure; each checkpoint scores as the model did at that step in training (the in-training
eval of the same step), the last as the exported model; bad requests fail in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.config import load_recipe
from keelctl.errors import KeelError
from keelctl.eval.checkpoints import evaluate_checkpoints, load_checkpoint
from keelctl.eval.runner import evaluate_runs
from keelctl.train import train

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"
TASK, LIMIT = "keel_hops_k1", 12


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_train_sets):
    """Keel and Pre-LN, 20 steps, a checkpoint every 5 steps, the last 3 kept (10, 15, 20),
    and the in-training eval of TASK at every 5th step."""
    root = tmp_path_factory.mktemp("ckpts")
    runs = []
    for residual in ("keel", "pre_ln"):
        sets = [
            *tiny_train_sets(root / "cache", max_steps=20),
            f"model.residual={residual}",
            "data.seq_len=64",
            "trainer.val_every=5",
            "trainer.keep_checkpoints=3",
            "trainer.eval_every=5",
            f"trainer.eval_tasks={TASK}",
            f"trainer.eval_limit={LIMIT}",
        ]
        run = root / residual
        train(load_recipe(RECIPE, sets), run, progress_bar=False)
        runs.append(run)
    return runs


def in_training_scores(run: Path) -> dict[int, float]:
    """{optimizer step: acc} of the in-training evaluations in metrics.csv."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"eval/{TASK}/acc")]
    return {int(r["step"]) + 1: float(r[f"eval/{TASK}/acc"]) for r in rows}


def test_each_checkpoint_scores_as_the_model_did_at_its_step(two_runs, tmp_path):
    report = evaluate_checkpoints(two_runs, "all", tasks=[TASK], limit=LIMIT, batch_size=4)
    rows = report["rows"]
    assert [(Path(r["run"]).name, r["step"]) for r in rows] == [
        (name, step) for name in ("keel", "pre_ln") for step in (10, 15, 20)
    ]
    for run in two_runs:
        mine = [r for r in rows if r["run"] == str(run)]
        assert [r["tokens"] for r in mine] == [s * 4 * 64 for s in (10, 15, 20)]
        during = in_training_scores(run)
        for r in mine:
            assert r["results"][TASK]["acc,none"] == during[r["step"]]
        final = evaluate_runs([run], tasks=[TASK], limit=LIMIT, batch_size=4)["runs"][0]
        assert mine[-1]["perplexity"]["nll"] == pytest.approx(final["perplexity"]["nll"], abs=1e-6)
        assert mine[-1]["results"][TASK]["acc,none"] == final["results"][TASK]["acc,none"]
        # training lowers the held-out loss between the first kept and the last checkpoint
        assert mine[-1]["perplexity"]["nll"] < mine[0]["perplexity"]["nll"]


def test_cli_writes_one_table_a_json_and_a_figure(two_runs, tmp_path):
    output = tmp_path / "out" / "ckpts.json"
    args = ["eval", *map(str, two_runs), "--checkpoints", "10,20", "--tasks", TASK]
    args += ["--limit", str(LIMIT), "--batch-size", "4", "--output", str(output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert [r["step"] for r in report["rows"]] == [10, 20, 10, 20]
    figure = output.with_suffix(".png")
    assert figure.read_bytes()[:4] == b"\x89PNG"
    for name in ("held-out loss", f"{TASK} acc", "keel", "pre_ln"):
        assert name in result.output


def test_bad_requests_fail_in_one_line(two_runs, trained_run_dir, tmp_path):
    cases = {
        (str(two_runs[0]), "--checkpoints", "5"): "did not keep step(s) 5; it kept 10, 15, 20",
        (str(two_runs[0]), "--checkpoints", "ten"): "give 'all' or steps separated by commas",
        (str(trained_run_dir), "--checkpoints", "all"): "kept no step checkpoints",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(app, ["eval", *args, "--output", str(tmp_path / "x.json")])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "x.json").exists()


def test_unreadable_checkpoints_fail_in_one_line(tmp_path):
    """The checks train's resume makes (read_checkpoint_file), plus a file torch reads that
    keelctl did not write."""
    cut, foreign, unsafe = (tmp_path / n for n in ("cut.ckpt", "foreign.ckpt", "unsafe.ckpt"))
    torch.save({"state_dict": {"w": torch.zeros(64)}}, foreign)
    cut.write_bytes(foreign.read_bytes()[:100])
    torch.save({"state_dict": {}, "hook": Path("anything")}, unsafe)  # a class: pickled code
    cases = {
        cut: f"cannot read checkpoint {cut} (",
        foreign: f"{foreign} is not a keelctl training checkpoint (KeyError: 'hyper_parameters')",
        unsafe: f"checkpoint {unsafe} holds Python objects beyond tensors and plain data",
    }
    for path, message in cases.items():
        with pytest.raises(KeelError) as info:
            load_checkpoint(path, torch.device("cpu"))
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
