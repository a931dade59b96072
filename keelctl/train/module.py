"""The LightningModule: next-token cross-entropy, AdamW and a warm-up + cosine schedule.

The Transformer lives at `self.model` (callbacks and the exporter read it there); the recipe is
saved as a hyperparameter and the tokenizer travels inside every checkpoint.
"""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.aggregation import MeanMetric

from keelctl.config import RecipeConfig
from keelctl.model import build_model
from keelctl.model.checkpointing import apply_activation_checkpointing

TOKENIZER_KEY = "keelctl_tokenizer"
RNG_KEY = "keelctl_rng"


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


class _LRFactor:
    """LambdaLR's multiplier; a class, not a lambda, so the schedule stays inspectable."""

    def __init__(self, lr: float, min_lr: float, warmup_steps: int, max_steps: int):
        self.kw = dict(lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps)

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(step, **self.kw) / self.kw["lr"]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on Linear weights; none on norm gains, biases and
    embeddings (a tied head shares the embedding's weight, so it is not decayed either).
    Chosen by module type, not by p.ndim: under FSDP every parameter is a flat 1-D shard."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - no_decay
    decay, rest = [], []
    for p in model.parameters():
        (decay if id(p) in linear else rest).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def _rng_states() -> dict:
    """Every generator's state as tensors and ints, so checkpoints load with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class LanguageModel(L.LightningModule):
    def __init__(self, recipe: dict, tokenizer: dict | None = None):
        super().__init__()
        self.save_hyperparameters("recipe")
        self.recipe = RecipeConfig(**recipe)
        self.tokenizer = tokenizer
        self.model = build_model(self.recipe.model)
        trainer_cfg = self.recipe.trainer
        # FSDP checkpoints blocks itself (fit.py passes the policy), so only wrap otherwise.
        if trainer_cfg.activation_checkpointing and trainer_cfg.strategy != "fsdp":
            apply_activation_checkpointing(self.model)  # state_dict keys do not change
        if trainer_cfg.compile:
            self.model.compile()  # in place: parameter names keep no `_orig_mod.` prefix
        self.val_loss = MeanMetric()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(*batch)
        # train_loss: the mean over ranks of the step's last micro-batch loss (with one micro-batch,
        # the loss of the whole global batch); lr: the one this step's update uses.
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        self.val_loss.update(self.loss(*batch), weight=x.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean, synced across ranks
        self.val_loss.reset()
        # Already equal on every rank; sync_dist only tells Lightning so.
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", torch.exp(loss), sync_dist=True)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by global norm. Lightning's FSDP precision plugin refuses norm clipping (a
        per-shard norm would be wrong); the root FSDP module's clip_grad_norm_ computes the norm
        over all shards, as torch's FSDP docs ask."""
        if gradient_clip_val is None:
            return
        root = self.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):
            root.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        o, t = self.recipe.optim, self.recipe.trainer
        optimizer = torch.optim.AdamW(
            decay_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
        )
        schedule = LambdaLR(optimizer, _LRFactor(o.lr, o.min_lr, o.warmup_steps, t.max_steps))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TOKENIZER_KEY] = self.tokenizer
        checkpoint[RNG_KEY] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer = checkpoint.get(TOKENIZER_KEY, self.tokenizer)
        if RNG_KEY in checkpoint:
            _set_rng_states(checkpoint[RNG_KEY])
