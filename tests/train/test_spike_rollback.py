"""trainer.spike_rollback: a loss spike sends the run back to last.ckpt with a lower LR."""

from __future__ import annotations

import csv
import json
import logging
import math

import lightning as L
import pytest
import torch
from child_runs import TINY_KEEL, metrics

from keelctl.config import load_recipe
from keelctl.errors import KeelError
from keelctl.train import train

ROLLBACK = (
    "trainer.spike_rollback.enabled=true",
    "trainer.spike_rollback.window=3",
    "trainer.spike_rollback.lr_scale=0.5",
)


class BlowUpHead(L.Callback):
    """After `step` updates, multiplies the head's weights by `factor` (the next loss spikes);
    `times` times at most, counted over every fit of the run."""

    def __init__(self, step: int, factor: float = 1000.0, times: int = 1):
        self.step, self.factor, self.times = step, factor, times

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step and self.times > 0:
            self.times -= 1
            with torch.no_grad():
                pl_module.model.head.weight.mul_(self.factor)


def rows_with(run, column):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get(column)]


def test_a_spike_rolls_back_to_the_last_checkpoint_with_half_the_lr(
    cpu_tiny_sets, tmp_path, caplog
):
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(*ROLLBACK, max_steps=30))
    run, reference = tmp_path / "run", tmp_path / "reference"
    train(recipe, reference, progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="keelctl.train.fit"):
        summary = train(recipe, run, progress_bar=False, callbacks=[BlowUpHead(14)])

    assert summary["status"] == "finished" and summary["steps"] == 30
    (event,) = summary["rollbacks"]
    assert event["step"] == 14 and event["resumed_from_step"] == 10 and event["lr_scale"] == 0.5
    assert event["loss"] > 2 * event["running_mean"]  # trainer.spike_rollback.factor
    assert "rolled back to the checkpoint of step 10" in caplog.text
    (marker,) = rows_with(run, "rollback")
    assert (marker["step"], float(marker["spike_loss"])) == ("14", event["loss"])

    # Before the checkpoint: the same run. After it: the same schedule at half the LR.
    ours, ref = metrics(run, ["lr", "train_loss"]), metrics(reference, ["lr", "train_loss"])
    for step in range(10):
        assert ours[step, "train_loss"] == ref[step, "train_loss"]
    for step in range(10, 30):
        assert ours[step, "lr"] == pytest.approx(0.5 * ref[step, "lr"], rel=1e-6)
    assert len([k for k in ours if k[1] == "train_loss"]) == 30  # one row per step, none twice

    # The reduced LR is in the checkpoints (the guard's record; the schedule keeps only its
    # step), so a --resume keeps it.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (guard,) = [state for key, state in ckpt["callbacks"].items() if "LossGuard" in key]
    assert guard["rollbacks"][-1]["lr_scale"] == 0.5
    assert len(json.loads((run / "summary.json").read_text())["rollbacks"]) == 1


def test_spikes_beyond_max_rollbacks_stop_the_run(cpu_tiny_sets, tmp_path):
    sets = cpu_tiny_sets(*ROLLBACK, "trainer.spike_rollback.max_rollbacks=2", max_steps=30)
    run = tmp_path / "run"
    with pytest.raises(KeelError, match=r"at step 14 .*after 2 rollbacks .*max_rollbacks"):
        train(load_recipe(TINY_KEEL, sets), run, progress_bar=False,
              callbacks=[BlowUpHead(14, times=3)])  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and len(summary["rollbacks"]) == 2
    assert [r["step"] for r in rows_with(run, "rollback")] == ["14", "14"]


def test_a_nan_loss_rolls_back_too(cpu_tiny_sets, tmp_path):
    sets = cpu_tiny_sets(*ROLLBACK, max_steps=20)
    summary = train(load_recipe(TINY_KEEL, sets), tmp_path / "run", progress_bar=False,
                    callbacks=[BlowUpHead(12, factor=math.nan)])  # fmt: skip
    assert summary["status"] == "finished" and summary["rollbacks"][0]["step"] == 12
    assert summary["rollbacks"][0]["loss"] == "nan"


def test_a_spike_before_the_first_checkpoint_stops_the_run(cpu_tiny_sets, tmp_path):
    with pytest.raises(KeelError, match="before the first checkpoint .nothing to roll back to"):
        train(load_recipe(TINY_KEEL, cpu_tiny_sets(*ROLLBACK, max_steps=20)), tmp_path / "run",
              progress_bar=False, callbacks=[BlowUpHead(7)])  # fmt: skip


def test_spikes_are_not_checked_when_rollback_is_off(cpu_tiny_sets, tmp_path):
    summary = train(load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=20)), tmp_path / "run",
                    progress_bar=False, callbacks=[BlowUpHead(12)])  # fmt: skip
    assert summary["status"] == "finished" and summary["rollbacks"] == []
