"""The Lightning side of `keelctl bench`: keelctl's LanguageModel driven by a Trainer with
nothing extra (no logger, checkpointing, progress bar, validation), timed by a callback that
marks the end of each optimizer step exactly where the bare loop does."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from keelctl.bench.clock import StepClock
from keelctl.config import RecipeConfig
from keelctl.train.module import LanguageModel

# Lightning's start-up notes ("GPU available: ...") and warnings that do not apply to a
# benchmark: it reads pre-made batches (workers would only add noise), validates nothing, and
# a deprecation inside Lightning itself is not the user's to fix.
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_EXPECTED_WARNINGS = (
    "does not have many workers",
    "is smaller than the logging interval",
    "You defined a `validation_step` but have no `val_dataloader`",
    "`isinstance(treespec, LeafSpec)` is deprecated",
)


class _StepTimer(Callback):
    def __init__(self, device: torch.device):
        self.clock = StepClock(device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick()


@contextmanager
def _quiet() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with warnings.catch_warnings():
        for text in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def time_lightning(recipe: RecipeConfig, batches: list, device: torch.device) -> StepClock:
    """Step intervals (wall and CPU) of Trainer.fit on keelctl's LanguageModel over `batches`
    of (x, y)."""
    with torch.device(device):  # parameters are created on the device (fast init at 1B+)
        module = LanguageModel(recipe.model_dump(mode="json"))
    timer = _StepTimer(device)
    t = recipe.trainer
    with _quiet():
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=t.precision,
            max_steps=t.max_steps,
            max_epochs=-1,
            gradient_clip_val=recipe.optim.grad_clip,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(module, train_dataloaders=loader)
    return timer.clock
