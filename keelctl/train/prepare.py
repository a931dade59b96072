"""Model preparation: what train (LanguageModel) and bench's bare loop do to a freshly built
Transformer before its first step, in torchtitan's order: activation checkpointing, then
per-block compile. Under trainer.strategy fsdp, LanguageModel.configure_model then shards it
(train/parallel.py), once Lightning has made the device mesh.

    model = prepare_model(build_model(recipe.model), recipe.trainer)
"""

from __future__ import annotations

import torch

from keelctl.config import TrainerConfig
from keelctl.model import Transformer
from keelctl.model.checkpointing import apply_activation_checkpointing
from keelctl.train.compile import check_compile_available, compile_blocks


def prepare_model(model: Transformer, t: TrainerConfig) -> Transformer:
    """Apply t.activation_checkpointing and t.compile to `model` in place: parameter names and
    state_dict keys stay those of the plain model (no `_orig_mod.` prefix). Compile is checked
    first on the device t.accelerator picks (one-line KeelError where it cannot run)."""
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    if t.compile:
        check_compile_available(_device_type(t.accelerator))
        compile_blocks(model)
    return model


def _device_type(accelerator: str) -> str:
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if gpu else "cpu"
