"""Running on many devices: the Lightning strategy, crash-safe checkpoint writes, and the full
weights of a sharded model for export. How to launch: docs/scale.md.

    ddp   one replica per device; gradients all-reduced (averaged) after each backward.
    fsdp  Lightning's FSDPStrategy: one FSDP unit per Block (parameters, gradients and AdamW
          state sharded across devices), activation checkpointing per Block when
          trainer.activation_checkpointing is set, full (unsharded) checkpoints written by rank 0.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, Strategy

from keelctl.config import TrainerConfig
from keelctl.model import Block, Transformer, build_model
from keelctl.runs import atomic_path


def make_strategy(t: TrainerConfig) -> str | Strategy:
    if t.strategy != "fsdp":
        return t.strategy  # "auto" or "ddp": Lightning's own
    return FSDPStrategy(
        auto_wrap_policy={Block},
        # Lightning wraps each Block in torch's non-reentrant checkpoint wrapper after sharding;
        # LanguageModel leaves the blocks alone under fsdp (keelctl/model/checkpointing.py
        # does the same job for ddp and one device).
        activation_checkpointing_policy={Block} if t.activation_checkpointing else None,
        state_dict_type="full",  # one .ckpt file, readable on any device count
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but a save can never leave a partial checkpoint: torch.save
    streams into a temporary file beside the target, which is fsynced and renamed over it
    (keelctl.runs.atomic_path). Lightning's own save buffers the whole checkpoint in memory and
    moves it from the system temp dir, which is a copy, not a rename, when that is another file
    system. Loads always use weights_only=True: no code in a checkpoint is ever run."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def gathered_model(trainer: Trainer, module: LightningModule) -> Transformer | None:
    """The trained Transformer with all of its weights, on global rank zero (None elsewhere).
    Every rank must call it: under FSDP it gathers the shards, a collective; the gathered
    copy lives on rank zero's CPU and shares nothing with the sharded model."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model if trainer.is_global_zero else None
    state = trainer.strategy.lightning_module_state_dict()  # full on rank 0, empty elsewhere
    if not trainer.is_global_zero:
        return None
    prefix = "model."
    with torch.device("meta"):
        model = build_model(module.model.config)
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    model.load_state_dict(weights, strict=True, assign=True)
    if model.config.tie_embeddings:  # assign=True gave the head its own Parameter
        model.head.weight = model.tok_emb.weight
    return model
