"""The loss guard: every micro-batch's loss (the mean over ranks) is checked, in batches, so
that training never waits for the GPU to hand a loss to the host:

- each micro-batch's loss stays on the device until a check; a check reduces all losses since
  the last one over ranks in one collective and reads them in one copy to the host;
- checks run on the steps the loggers write (trainer.log_every), before every checkpoint
  is saved (whatever saves it) and at the end of training.

- NaN or Inf: the run stops (TrainingDiverged), marked diverged = 1 in metrics.csv at the step
  of the bad loss.
- With trainer.spike_rollback.enabled, a spike (loss > factor x the mean of the previous
  `window` losses) or a NaN/Inf raises LossSpike instead, at most max_rollbacks times: train()
  then goes back to checkpoints/last.ckpt and continues with the learning rate multiplied by
  lr_scale (once more per rollback). A spike after the last allowed rollback stops the run.

A bad loss may update the weights for up to trainer.log_every steps before it is seen, but
never reaches a checkpoint: the check before each save raises first, so last.ckpt is always
from before the bad loss, which is where a rollback goes back to.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import lightning as L
import torch

from keelctl.config import SpikeRollbackConfig
from keelctl.errors import KeelError


class TrainingDiverged(KeelError):
    """The run cannot go on: a NaN/Inf loss, or a spike with no rollback left."""

    def __init__(self, step: int, loss: float, lr: float, why: str = ""):
        self.step, self.loss, self.lr, self.why = step, loss, lr, why
        super().__init__(f"training diverged: loss {loss} at step {step} (lr {lr:.3g}){why}")


class LossSpike(Exception):  # noqa: N818 (an event train() handles, not an error)
    """Raised on every rank at once; `event` is the rollback's record (also kept by the guard)."""

    def __init__(self, event: dict):
        self.event = event
        super().__init__(f"loss spike at step {event['step']}")


class LossGuard(L.Callback):
    """See the module docstring. `lr` is the recipe's peak LR; the guard's rollback records
    (and so the LR scale) travel in every checkpoint, so a resumed run keeps its reduced LR."""

    def __init__(self, rollback: SpikeRollbackConfig, lr: float, last_ckpt: Path):
        self.cfg, self.lr, self.last_ckpt = rollback, lr, last_ckpt
        self.rollbacks: list[dict] = []  # step, loss, running_mean, lr, lr_scale
        self._recent: deque[float] = deque(maxlen=rollback.window)
        self._pending: list[tuple[int, float, torch.Tensor]] = []  # step, lr, loss (on device)

    @property
    def lr_scale(self) -> float:
        return self.rollbacks[-1]["lr_scale"] if self.rollbacks else 1.0

    def state_dict(self) -> dict:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        # A rollback restores a checkpoint written before it: keep the longer record.
        if len(state["rollbacks"]) > len(self.rollbacks):
            self.rollbacks = [dict(r) for r in state["rollbacks"]]

    def on_train_start(self, trainer, pl_module) -> None:
        self._recent.clear()
        self._pending.clear()
        if self.rollbacks:  # after the checkpoint's optimizer and schedule were restored
            scheduler = trainer.lr_scheduler_configs[0].scheduler  # keelctl.train.optim's
            scheduler.base_lrs = [self.lr * self.lr_scale] * len(scheduler.base_lrs)
            scheduler.apply()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        scaled = loss.detach() * trainer.accumulate_grad_batches  # Lightning divided it
        self._pending.append((trainer.global_step, lr, scaled))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = self._pending and trainer.global_step > self._pending[-1][0]
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer)  # raising here keeps a bad loss's weights out of every checkpoint

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Judge every loss since the last check, in order. Every rank calls it at the same
        points with the same number of losses: one all-reduce, one copy to the host."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([loss for _, _, loss in pending])
        values = trainer.strategy.reduce(losses, reduce_op="mean").tolist()
        for (step, lr, _), value in zip(pending, values, strict=True):
            self._judge(trainer, step, lr, value)

    def _judge(self, trainer, step: int, lr: float, value: float) -> None:
        full = len(self._recent) == self._recent.maxlen
        running = sum(self._recent) / len(self._recent) if full else math.nan
        spiked = self.cfg.enabled and full and value > self.cfg.factor * running
        if math.isfinite(value) and not spiked:
            self._recent.append(value)
            return
        left = self.cfg.max_rollbacks - len(self.rollbacks)
        # Rank zero's view of the run dir decides, so that every rank does the same.
        checkpointed = trainer.strategy.broadcast(self.last_ckpt.is_file())
        if self.cfg.enabled and left > 0 and checkpointed:
            event = {
                "step": step,
                "loss": value,
                "running_mean": running,
                "lr": lr,
                "lr_scale": self.lr_scale * self.cfg.lr_scale,
            }
            self.rollbacks.append(event)
            raise LossSpike(event)
        for logger in trainer.loggers:
            logger.log_metrics({"diverged": 1.0, "train_loss": value}, step=step)
            logger.save()
        why = ""
        if spiked:
            why = f", {value / running:.1f}x the mean of the last {len(self._recent)} losses"
        if self.cfg.enabled:
            why += (
                f", after {len(self.rollbacks)} rollbacks (trainer.spike_rollback.max_rollbacks)"
                if left == 0
                else ", before the first checkpoint (nothing to roll back to)"
            )
        raise TrainingDiverged(step, value, lr, why)
