"""When checkpoints are written, and which are kept (RUN/checkpoints/, docs/runs.md).

    best.ckpt          after a validation with the lowest val_loss so far (ModelCheckpoint)
    last.ckpt          after each validation (ModelCheckpoint), every
                       trainer.checkpoint_every_minutes of training, and on a stop signal
    step-NNNNNNN.ckpt  the last trainer.keep_checkpoints states of last.ckpt, as hard links
                       (no extra writing)

All writes go through AtomicCheckpointIO (checkpoint_io.py): temporary file, fsync, rename.

The timed and signalled saves happen at the end of an optimizer step, except at a step that
is followed by a validation: there the validation's own last.ckpt comes a moment later, and a
checkpoint from before a due validation would make Lightning skip that validation on resume.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from keelctl.atomic import atomic_path
from keelctl.config import TrainerConfig
from keelctl.errors import KeelError
from keelctl.runs import LAST_CKPT, Run, step_checkpoint_name
from keelctl.train.preemption import RunPreempted, StopSignals

log = logging.getLogger(__name__)

BEST_CKPT = "best.ckpt"


def keep_step_copy(ckpt_dir: Path, step: int, keep: int) -> None:
    """Hard-link last.ckpt as step-N.ckpt (a copy where the file system has no hard links)
    and delete all but the newest `keep` step checkpoints."""
    if keep < 1:
        return
    last, target = ckpt_dir / LAST_CKPT, ckpt_dir / step_checkpoint_name(step)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(last, tmp)
        except OSError:
            import shutil

            shutil.copyfile(last, tmp)
    kept = list(Run(ckpt_dir.parent).step_checkpoints().values())
    for old in kept[:-keep]:
        old.unlink(missing_ok=True)


def checkpoint_callbacks(t: TrainerConfig, ckpt_dir: Path) -> list[L.Callback]:
    """The step-end saver (time, stop signals), then best.ckpt and last.ckpt after each
    validation (best first, so last.ckpt carries the updated best score)."""
    if t.keep_checkpoints and t.strategy == "fsdp":
        raise KeelError(
            "trainer.keep_checkpoints keeps single-file checkpoints, and under trainer.strategy "
            "fsdp they are sharded folders; set trainer.keep_checkpoints=0 (last and best stay)"
        )
    keep = t.keep_checkpoints
    return [
        StepEndCheckpoint(ckpt_dir, t.val_every, t.checkpoint_every_minutes, keep),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=BEST_CKPT.removesuffix(".ckpt"),
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            enable_version_counter=False,
        ),
        _LastCheckpoint(ckpt_dir, keep),
    ]


class _LastCheckpoint(ModelCheckpoint):
    def __init__(self, ckpt_dir: Path, keep: int):
        super().__init__(
            dirpath=ckpt_dir,
            filename=LAST_CKPT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        )
        self.ckpt_dir, self.keep = Path(ckpt_dir), keep

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            keep_step_copy(self.ckpt_dir, trainer.global_step, self.keep)


class StepEndCheckpoint(L.Callback):
    """last.ckpt at the end of an optimizer step when `every_minutes` of training passed since
    the last checkpoint, or when a stop signal came; then, for a signal, RunPreempted. One
    all-reduce of two numbers per optimizer step makes every rank decide the same."""

    def __init__(
        self, ckpt_dir: Path, val_every: int, every_minutes: float | None, keep: int
    ) -> None:
        self.ckpt_dir, self.val_every, self.keep = Path(ckpt_dir), val_every, keep
        self.every_s = every_minutes * 60 if every_minutes else None
        self.signals = StopSignals()
        self._stop_at_next_batch = 0  # the signal, once last.ckpt holds the step it came in

    def on_train_start(self, trainer, pl_module) -> None:
        self.signals.install()
        self._last_step = trainer.global_step
        self._saved_at = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._saved_at = time.monotonic()  # last.ckpt follows every validation

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stop_at_next_batch:
            raise RunPreempted(self._stop_at_next_batch, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # still accumulating micro-batches
            return
        self._last_step = step
        signum, due = self._agree(trainer)
        if not (signum or due):
            return
        # The stop comes at the next batch's start: Lightning logs this step's metrics (and
        # runs a due validation, which writes last.ckpt) in between.
        self._stop_at_next_batch = signum
        if step >= trainer.max_steps or step % self.val_every == 0:  # a validation follows
            return
        trainer.save_checkpoint(self.ckpt_dir / LAST_CKPT)
        self._saved_at = time.monotonic()
        if trainer.is_global_zero:
            keep_step_copy(self.ckpt_dir, step, self.keep)

    def _agree(self, trainer) -> tuple[int, bool]:
        due = self.every_s is not None and time.monotonic() - self._saved_at >= self.every_s
        if trainer.world_size == 1:
            return self.signals.received, due
        # A host sync per step, as Lightning's own per-batch SIGTERM broadcast under ddp.
        flags = torch.tensor([self.signals.received, int(due)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="max")
        return int(flags[0]), bool(flags[1])
