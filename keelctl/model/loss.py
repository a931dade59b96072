"""The training loss, the one used by train, bench and analysis: mean next-token cross-entropy
in nats per token, computed in fp32 (or wider) whatever the logits' dtype (bf16 under FSDP's
param_dtype or autocast)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) for inputs whose next tokens are targets (B, T); the mean over B x T."""
    wide = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.flatten(0, 1).to(wide), targets.flatten())
