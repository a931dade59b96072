"""The Lightning side of `keelctl bench`: keelctl's LanguageModel driven by a Trainer with
nothing extra (no logger, checkpointing, progress bar, validation), timed by a callback that
marks the end of each optimizer step exactly where the bare loop does."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from keelctl.bench.clock import StepClock
from keelctl.config import RecipeConfig
from keelctl.train.module import LanguageModel
from keelctl.train.trainer import build_trainer, expected_warnings_hidden


class _StepTimer(Callback):
    def __init__(self, device: torch.device):
        self.clock = StepClock(device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick()


def time_lightning(recipe: RecipeConfig, batches: list, device: torch.device) -> StepClock:
    """Step intervals (wall and CPU) of Trainer.fit on keelctl's LanguageModel over `batches`
    of (x, y); recipe.trainer.accelerator names `device`'s type."""
    with torch.device(device):  # parameters are created on the device (fast init at 1B+)
        module = LanguageModel(recipe.model_dump(mode="json"))
    timer = _StepTimer(device)
    # Lightning's start-up notes hidden too: a benchmark prints its own table.
    with expected_warnings_hidden(hide_notes=True):
        trainer = build_trainer(recipe, [timer])
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(module, train_dataloaders=loader)
    return timer.clock
