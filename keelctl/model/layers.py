"""The branches F of the sub-layers: causal self-attention with RoPE and GQA, and the FFN."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from keelctl.model.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """RoPE's inverse frequencies theta^(-2j/D), j = 0..D/2-1 (D = head_dim), in fp32."""
    exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
    return cfg.rope_theta**-exponent


def rope_tables(
    inv_freq: torch.Tensor, n: int, positions: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles in `dtype` (fp32 or wider: angles never in bf16), for
    positions 0..n-1, shape (n, D), or for `positions` (B, n) per row (a KV cache decoding after
    a prefix, left-padded rows), shape (B, 1, n, D). The model computes them once per forward
    and hands them to every attention layer, as transformers' Llama does."""
    if positions is None:
        t = torch.arange(n, device=inv_freq.device, dtype=dtype)
        angles = torch.outer(t, inv_freq.to(dtype))  # (n, D/2)
    else:
        angles = (positions.to(dtype).unsqueeze(-1) * inv_freq.to(dtype)).unsqueeze(1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x (B, H, T, D); cos, sin: rope_tables'."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        # HybridNorm's QKV normalisation (Zhuo et al. 2025; their code: one gain per head dim)
        self.qkv_norm = (
            nn.ModuleList(RMSNorm(cfg.head_dim, eps=cfg.norm_eps) for _ in range(3))
            if cfg.uses_qkv_norm
            else None
        )
        # for a sub-layer run on its own (keelctl.analysis): the model passes its tables in
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(
        self, x: torch.Tensor, kv=None, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Causal self-attention over x; with `kv` (one layer of keelctl.generate's KVCache)
        x holds only the new tokens: their keys/values join the cache and the queries attend
        to every cached one that kv.mask allows (None: all of them). `rope`: rope_tables' cos
        and sin for x's positions (None: computed here)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qkv_norm is not None:  # HybridNorm: per-head RMSNorm of q, k, v before RoPE
            q, k, v = (n(t).to(t.dtype) for n, t in zip(self.qkv_norm, (q, k, v), strict=True))
        if rope is None:
            wide = torch.promote_types(q.dtype, torch.float32)
            rope = rope_tables(self.inv_freq, T, None if kv is None else kv.positions, wide)
        q, k = rope_rotate(q, *rope), rope_rotate(k, *rope)
        if kv is not None:
            k, v = kv.append(k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if kv is None else kv.mask,
            is_causal=kv is None,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def branch_weights(self) -> list[nn.Linear]:
        """The weights DeepNorm scales at init: value and output projections."""
        return [self.wv, self.wo]


class FeedForward(nn.Module):
    """swiglu: w2(silu(w1 x) * w3 x); gelu: w2(gelu(w1 x)). No biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.ffn == "swiglu"
        self.w1 = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.hidden, bias=False) if self.gated else None
        self.w2 = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))

    def branch_weights(self) -> list[nn.Linear]:
        return [w for w in (self.w1, self.w3, self.w2) if w is not None]


def rounded(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """x rounded to `dtype`'s precision and kept in its own dtype (None: x as it is): how the
    model simulates a bf16 implementation's numerics while computing in fp32. Gradients pass
    through, rounded the same way, as they would through a bf16 copy."""
    return x if dtype is None else x.to(dtype).to(x.dtype)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm that always computes in fp32 or wider and returns that dtype, whatever the
    dtypes of its input and of its gain (a bf16 gain next to an fp32 input would also miss
    torch's fused kernel). keelctl keeps every gain fp32 on every path (FSDP2 shards the norms
    in fp32 units, keelctl.train.parallel); `gain_dtype` bf16 rounds the gain in the forward pass,
    the numerics of an implementation that stores it in bf16 (ModelConfig.norm_dtype)."""

    def __init__(self, dim: int, eps: float, gain_dtype: torch.dtype | None = None):
        super().__init__(dim, eps=eps)
        self.gain_dtype = gain_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        gain = rounded(self.weight.to(wide), self.gain_dtype)
        with autocast_off(x.device.type):
            return F.rms_norm(x.to(wide), self.normalized_shape, gain, self.eps)


def autocast_off(device_type: str):
    """A context that turns autocast off: torch.autocast(enabled=False) where it is on, else a
    no-op (entering torch.autocast costs microseconds, a share of a one-token decoding step)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
