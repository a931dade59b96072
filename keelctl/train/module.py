"""The LightningModule: next-token cross-entropy (keelctl.model.loss), AdamW and a warm-up +
cosine schedule (keelctl.train.optim).

The Transformer lives at `self.model` (callbacks and the exporter read it there); the recipe is
saved as a hyperparameter and the tokenizer travels inside every checkpoint.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule
from torchmetrics.aggregation import MeanMetric

from keelctl.config import RecipeConfig
from keelctl.model import build_model
from keelctl.model.loss import next_token_loss
from keelctl.train.optim import build_optimizer, build_schedule
from keelctl.train.parallel import shard_model
from keelctl.train.prepare import prepare_model

TOKENIZER_KEY = "keelctl_tokenizer"
RNG_KEY = "keelctl_rng"


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
        # Sharded under fsdp later, in configure_model (prepare.py).
        self.model = prepare_model(build_model(self.recipe.model), self.recipe.trainer)
        self.val_loss = MeanMetric()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return next_token_loss(self.model(x), y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(*batch)
        # train_loss: the mean over ranks of the step's last micro-batch loss (with one micro-batch,
        # the loss of the whole global batch); lr: the one this step's update uses. Both logged
        # as CPU tensors, and train_loss reduced only on the steps the loggers write: Lightning
        # turns progress-bar values into numbers after every micro-batch, which for a GPU
        # tensor would make the host wait for the GPU each time.
        if self._logs_this_step():
            mean = self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
            self.log("train_loss", mean.cpu(), prog_bar=True)
        self.log(
            "lr", torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"]), prog_bar=True
        )
        return loss

    def _logs_this_step(self) -> bool:
        """The steps Lightning's loggers write: every trainer.log_every-th, and the last."""
        step = self.trainer.global_step + 1
        return step % self.trainer.log_every_n_steps == 0 or step >= self.trainer.max_steps

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        self.val_loss.update(self.loss(*batch), weight=x.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean, synced across ranks
        self.val_loss.reset()
        # Already equal on every rank; sync_dist only tells Lightning so.
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", torch.exp(loss), sync_dist=True)

    def configure_model(self) -> None:
        """Under trainer.strategy fsdp (FSDP2Strategy), shard the model over the data-parallel
        mesh, once. Clipping needs nothing more: under FSDP2 the gradients are DTensors, whose
        norm torch's clip_grad_norm_ computes over all shards."""
        if self._device_mesh is not None and not isinstance(self.model, FSDPModule):
            mesh = self._device_mesh["data_parallel"]
            shard_model(self.model, mesh, self.recipe.trainer.precision)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.recipe.optim)
        schedule = build_schedule(optimizer, self.recipe.optim, self.recipe.trainer.max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning frees the gradients in the next step's closure, after its forward: alive
        # through that forward, they keep the freed activations' memory from being reused
        # (50-60 MiB more peak RSS in the demo, issue 29). The next backward sets them afresh
        # either way; with accumulation only a step ends here.
        optimizer.zero_grad(set_to_none=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TOKENIZER_KEY] = self.tokenizer
        checkpoint[RNG_KEY] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer = checkpoint.get(TOKENIZER_KEY, self.tokenizer)
        if RNG_KEY in checkpoint:
            _set_rng_states(checkpoint[RNG_KEY])
