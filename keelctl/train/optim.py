"""The one builder of the optimizer and the learning-rate schedule, used by training
(keelctl.train.module), `keelctl bench` and anything else that takes training steps.

    optimizer = build_optimizer(model, recipe.optim)
    schedule = build_schedule(optimizer, recipe.optim, recipe.trainer.max_steps)

The schedule is a function of (step, recipe): a checkpoint stores only the step, so a run
resumed with a larger trainer.max_steps stretches its cosine from the step it reached.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from keelctl.config import OptimConfig


def warmup_cosine_lr(
    step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int
) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up reaching lr at step
    warmup_steps - 1, then a cosine from lr down to min_lr at the last step (max_steps - 1)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max_steps - warmup_steps - 1
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on Linear weights; none on norm gains, biases and
    embeddings (a tied head shares the embedding's weight, so it is not decayed either).
    Chosen by module type, not by p.ndim: under FSDP1 every parameter is a flat 1-D shard."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - no_decay
    decay, rest = [], []
    for p in model.parameters():
        (decay if id(p) in linear else rest).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over decay_groups; the fused CUDA kernel when every parameter is on a GPU (one
    launch per step instead of several per parameter group, and no sqrt(v) temporary)."""
    on_gpu = all(p.device.type == "cuda" for p in model.parameters())
    return torch.optim.AdamW(
        decay_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        fused=True if on_gpu else None,
    )


class WarmupCosine(LRScheduler):
    """warmup_cosine_lr of the recipe, times base_lr / optim.lr for each parameter group (a
    spike rollback lowers base_lrs). state_dict holds only the step: the shape of the schedule
    always comes from the recipe, never from a checkpoint."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int):
        self.peak = optim.lr
        self.shape = dict(min_lr=optim.min_lr, warmup_steps=optim.warmup_steps, max_steps=max_steps)
        super().__init__(optimizer)

    def lrs_at(self, step: int) -> list[float]:
        factor = warmup_cosine_lr(step, lr=self.peak, **self.shape) / self.peak
        return [base * factor for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    def apply(self) -> None:
        """Set every group's lr to this step's (after a restore or a change of base_lrs)."""
        self._last_lr = self.lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self.apply()  # the restored optimizer holds the lr of the old schedule


def build_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int
) -> WarmupCosine:
    return WarmupCosine(optimizer, optim, max_steps)
