"""The loss guard: every micro-batch's loss (the mean over ranks) is checked before its backward.

- NaN or Inf: the run stops (TrainingDiverged), marked diverged = 1 in metrics.csv.
- With trainer.spike_rollback.enabled, a spike (loss > factor x the mean of the previous
  `window` losses) or a NaN/Inf raises LossSpike instead, at most max_rollbacks times: train()
  then goes back to checkpoints/last.ckpt and continues with the learning rate multiplied by
  lr_scale (once more per rollback). A spike after the last allowed rollback stops the run.

The check runs before backward, so no update ever comes from the bad loss, and since
checkpoints are only written after validations, last.ckpt is from before the spike.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import lightning as L

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
        if self.rollbacks:  # after the checkpoint's optimizer and schedule were restored
            base = self.lr * self.lr_scale
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            scheduler.base_lrs = [base] * len(scheduler.base_lrs)
            for group, factor in zip(
                trainer.optimizers[0].param_groups, scheduler.lr_lambdas, strict=True
            ):
                group["lr"] = base * factor(scheduler.last_epoch)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # clone: the all-reduce works in place, and `loss` is about to be back-propagated.
        mean_loss = trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        value = float(mean_loss) * trainer.accumulate_grad_batches  # Lightning divided it
        full = len(self._recent) == self._recent.maxlen
        running = sum(self._recent) / len(self._recent) if full else math.nan
        spiked = self.cfg.enabled and full and value > self.cfg.factor * running
        if math.isfinite(value) and not spiked:
            self._recent.append(value)
            return
        step, lr = trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]
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
