"""The KV cache: keys and values of every attention sub-layer, preallocated once per batch.

Each of the n_blocks attention sub-layers gets two buffers (B, kv_heads, capacity, head_dim) in
the branch dtype (bf16 under bf16 autocast, else the weights' dtype). `extend(n)` reserves the
next n slots and hands every layer a `LayerKV` view: the RoPE positions of the new tokens, the
attention mask, and `append`, which writes the new keys/values and returns all filled slots.

Rows may be left-padded (batched prompts of different lengths): row b's first pad[b] slots hold
padding that no real token attends to, and its positions count from its first real token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerKV:
    """One attention sub-layer's part of a cache step: what Attention.forward(x, kv) uses."""

    keys: torch.Tensor
    values: torch.Tensor
    start: int
    stop: int
    positions: torch.Tensor  # (B, n): RoPE positions of the new tokens
    mask: torch.Tensor | None  # (B, 1, n, stop) bool, True = may attend; None = every slot

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.narrow(2, self.start, self.stop - self.start).copy_(k)
        self.values.narrow(2, self.start, self.stop - self.start).copy_(v)
        return self.keys.narrow(2, 0, self.stop), self.values.narrow(2, 0, self.stop)


class KVCache:
    def __init__(
        self,
        cfg,
        batch_size: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        pad: torch.Tensor | None = None,
    ):
        shape = (batch_size, cfg.kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_blocks)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.n_blocks)]
        self.capacity, self.length = capacity, 0
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pad = zeros if pad is None else pad.to(device=device, dtype=torch.long)
        self.padded = bool(self.pad.any())  # fixed for the cache's life: read once, not per step

    def extend(self, n: int) -> list[LayerKV]:
        """Reserve slots length..length+n-1 for n new tokens per row; one view per layer."""
        start, stop = self.length, self.length + n
        if stop > self.capacity:
            raise ValueError(f"KV cache full: {stop} tokens for a capacity of {self.capacity}")
        self.length = stop
        device = self.pad.device
        slots = torch.arange(start, stop, device=device)
        positions = (slots.unsqueeze(0) - self.pad.unsqueeze(1)).clamp(min=0)
        mask = None
        if n > 1 or self.padded:
            keys = torch.arange(stop, device=device)
            causal = keys.view(1, 1, -1) <= slots.view(1, -1, 1)  # (1, n, stop)
            real = keys.view(1, 1, -1) >= self.pad.view(-1, 1, 1)  # (B, 1, stop)
            itself = keys.view(1, 1, -1) == slots.view(1, -1, 1)  # a pad query sees itself
            mask = ((causal & real) | itself).unsqueeze(1)  # never a row with nothing to see
        return [
            LayerKV(k, v, start, stop, positions, mask)
            for k, v in zip(self.keys, self.values, strict=True)
        ]
