"""The loss guard checks losses in batches (no host sync per micro-batch), yet a NaN never
reaches a checkpoint."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from test_divergence_guard import PoisonWeights

from keelctl.errors import KeelError
from keelctl.train import train


class CountReductions(L.Callback):
    """Records the optimizer step at each reduction over ranks (a collective, and in
    keelctl's use a copy to the host soon after)."""

    def __init__(self):
        self.steps: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        reduce = trainer.strategy.reduce

        def counted(*args, **kwargs):
            self.steps.append(trainer.global_step)
            return reduce(*args, **kwargs)

        trainer.strategy.reduce = counted


def test_losses_are_reduced_only_on_logged_steps_not_per_micro_batch(tiny_recipe, tmp_path):
    counter = CountReductions()
    recipe = tiny_recipe(
        "trainer.log_every=5",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_every=10",
        "trainer.grad_flow_every=0",  # grads.csv has its own reductions
        max_steps=20,
    )
    train(recipe, tmp_path / "run", progress_bar=False, callbacks=[counter])
    # train_loss: both micro-batches of steps 4, 9, 14, 19; the guard: once after each of them
    # (global_step then reads 5, 10, 15, 20). Nothing in the 32 other micro-batches.
    assert counter.steps == [4, 4, 5, 9, 9, 10, 14, 14, 15, 19, 19, 20]


def test_a_nan_between_logged_steps_is_caught_before_the_checkpoint_would_save_it(
    tiny_recipe, tmp_path
):
    run = tmp_path / "run"
    recipe = tiny_recipe("trainer.log_every=100", "trainer.val_every=10", max_steps=30)
    with pytest.raises(KeelError, match=r"diverged: loss nan at step 13 "):
        train(recipe, run, progress_bar=False, callbacks=[PoisonWeights(13)])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10  # the save at step 20 was refused
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 13
    assert not (run / "model.safetensors").exists()
