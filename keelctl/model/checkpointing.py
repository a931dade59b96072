"""Activation checkpointing per block: keep only each block's input, recompute its inside
during backward. Memory for activations then grows by one residual-stream tensor per block
instead of every intermediate of every sub-layer; the price is one extra forward pass.

    from keelctl.model.checkpointing import apply_activation_checkpointing
    apply_activation_checkpointing(model)   # in place; state_dict keys do not change
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from keelctl.model.transformer import Transformer


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # eval / no_grad: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: Transformer) -> Transformer:
    """Wrap every block's forward in torch.utils.checkpoint (non-reentrant). Idempotent;
    apply before torch.compile. Autocast state is restored during recomputation."""
    for block in model.blocks:
        if not is_checkpointed(block):
            block.forward = functools.partial(_checkpointed, block.forward)
    return model


def is_checkpointed(module: torch.nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, functools.partial) and forward.func is _checkpointed
