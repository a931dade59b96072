"""The next-token cross-entropy, the one definition train, bench, eval and analysis use: in
nats, computed in fp32 (or wider) whatever the logits' dtype (bf16 under FSDP's param_dtype or
autocast).

    next_token_loss(logits, targets)   # the training loss: the mean over B x T
    token_nll(logits, targets)         # per token (B, T): perplexity and layer ablation
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) for inputs whose next tokens are targets (B, T); the mean over B x T."""
    return _cross_entropy(logits, targets, "mean")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(targets) under logits (B, T, V), per token: (B, T), in fp32 or wider."""
    return _cross_entropy(logits, targets, "none").view(targets.shape)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    wide = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.flatten(0, 1).to(wide), targets.flatten(), reduction=reduction)
