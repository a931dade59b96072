"""Training callbacks: tokens/s, gradient norm, a last validation, the progress bar (loss guard:
guards.py; checkpoints: checkpoints.py)."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import RichProgressBar

from keelctl.train.parallel import is_sharded, local_grad


class TokenThroughput(L.Callback):
    """Logs tokens_per_s (all devices, training time only, averaged over a window of steps)
    and tokens (tokens trained on so far, counting the steps before a resume)."""

    def __init__(self, tokens_per_batch: int, window_steps: int = 20):
        self.tokens_per_batch = tokens_per_batch  # per device and micro-batch
        self.tokens_per_step = 0  # all devices, known once training starts
        self.window_steps = window_steps
        self.session_tokens = 0  # trained in this process (for the summary's average)
        self.train_seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        accumulation, world = trainer.accumulate_grad_batches, trainer.world_size
        self.tokens_per_step = self.tokens_per_batch * accumulation * world
        # Throughput's "samples" are tokens here, already summed over devices (world_size 1:
        # nothing is multiplied again). The window restarts after a resume or a rollback.
        self._throughput = Throughput(window_size=self.window_steps)
        self._last_step = trainer.global_step
        self._window_tokens = 0
        self._clock = time.perf_counter()

    def _elapsed(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        self._clock = now
        return self.train_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # still accumulating micro-batches
            return
        self.session_tokens += (step - self._last_step) * self.tokens_per_step
        self._window_tokens += (step - self._last_step) * self.tokens_per_step
        self._last_step = step
        elapsed = self._elapsed(trainer)
        self._throughput.update(time=elapsed, batches=step, samples=self._window_tokens)
        pl_module.log("tokens", float(step * self.tokens_per_step))
        rate = self._throughput.compute().get("device/samples_per_sec")
        if rate is not None:  # once the window is full
            pl_module.log("tokens_per_s", rate, prog_bar=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._elapsed(trainer)  # bank the training time so far

    def on_validation_end(self, trainer, pl_module) -> None:
        self._clock = time.perf_counter()  # validation time does not count

    @property
    def mean_tokens_per_s(self) -> float:
        return self.session_tokens / self.train_seconds if self.train_seconds else math.nan


class GradNorm(L.Callback):
    """Logs grad_norm: the global L2 norm of the gradients the optimizer step sees (after all
    micro-batches and the all-reduce, before clipping), on the steps Lightning logs."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not trainer._logger_connector.should_update_logs:  # computed only when logged
            return
        grads = [local_grad(p) for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        square = torch.stack(torch._foreach_norm(grads)).float().square().sum()
        if is_sharded(trainer.strategy):  # each rank holds a shard of the grads
            square = trainer.strategy.reduce(square, reduce_op="sum")
        pl_module.log("grad_norm", square.sqrt())


class ValidateAtEnd(L.Callback):
    """Asks for a stop at the last step: Lightning then validates once more (and the
    checkpoints are written), whether or not max_steps is a multiple of val_every."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class TrainProgressBar(RichProgressBar):
    """Rich bar (batches, elapsed, ETA) with loss, lr and tokens/s formatted for reading."""

    _SHOWN = {  # logged name -> (shown name, format)
        "train_loss": ("loss", "{:.4f}"),
        "lr": ("lr", "{:.2e}"),
        "tokens_per_s": ("tok/s", "{:,.0f}"),
        "val_loss": ("val", "{:.4f}"),
    }

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        return {
            shown: fmt.format(float(items[name]))
            for name, (shown, fmt) in self._SHOWN.items()
            if name in items
        }

    def _get_train_description(self, current_epoch: int) -> str:
        # Runs are step-based (one epoch spans the run), so "Epoch 0/-2" would only confuse.
        return f"{'train':{len(self.validation_description)}}"
