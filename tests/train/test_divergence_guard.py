"""The divergence guard: a NaN/Inf loss stops the run, is marked in the metrics, and the
last checkpoint stays a good one."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.train import train


class PoisonWeights(L.Callback):
    """Puts NaN into the head's weights after `step` updates: the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.head.weight.fill_(math.nan)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeelError, match=r"diverged: loss nan at step 12 .* last good checkpoint"):
        train(tiny_recipe(), run, progress_bar=False, callbacks=[PoisonWeights(12)])

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10  # the validation before the NaN
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())

    with open(run / "metrics.csv", newline="") as f:
        marked = [r for r in csv.DictReader(f) if r.get("diverged")]
    assert [(r["step"], r["diverged"], r["train_loss"]) for r in marked] == [("12", "1.0", "nan")]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 12
    assert not (run / "model.safetensors").exists()  # nothing exported from a diverged run


def test_cli_reports_divergence_in_one_line(tiny_args, tmp_path):
    result = CliRunner().invoke(
        app, ["train", *tiny_args("optim.lr=1e4"), "--run-dir", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged: loss nan")
    assert "Traceback" not in result.output + result.stderr
