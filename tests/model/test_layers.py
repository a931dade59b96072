"""Attention (RoPE, GQA, causal) and FFN against reference implementations written here."""

from __future__ import annotations

import torch

from keelctl.model import ModelConfig
from keelctl.model.layers import Attention, FeedForward


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pairs (j, j + D/2) by angle pos * theta^(-2j/D)."""
    _, _, T, D = x.shape
    out = x.clone()
    for pos in range(T):
        for j in range(D // 2):
            ang = pos * theta ** (-2 * j / D)
            a, b = x[..., pos, j], x[..., pos, j + D // 2]
            out[..., pos, j] = a * torch.cos(torch.tensor(ang, dtype=x.dtype)) - b * torch.sin(
                torch.tensor(ang, dtype=x.dtype)
            )
            out[..., pos, j + D // 2] = b * torch.cos(
                torch.tensor(ang, dtype=x.dtype)
            ) + a * torch.sin(torch.tensor(ang, dtype=x.dtype))
    return out


def test_attention_matches_explicit_causal_softmax_with_rope_and_gqa():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=4, n_kv_heads=2, rope_theta=100.0)
    attn = Attention(cfg).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    B, T, H, KV, D = 2, 6, 4, 2, 4
    q = attn.wq(x).view(B, T, H, D).transpose(1, 2)
    k = attn.wk(x).view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, dim=1)
    v = attn.wv(x).view(B, T, KV, D).transpose(1, 2).repeat_interleave(H // KV, dim=1)
    q, k = reference_rope(q, 100.0), reference_rope(k, 100.0)
    scores = q @ k.transpose(-1, -2) / D**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    # inv_freq is stored in fp32 (as in every RoPE implementation), hence 1e-8 not 1e-12.
    torch.testing.assert_close(attn(x), attn.wo(y), rtol=1e-6, atol=1e-8)


def test_swiglu_and_gelu_ffn():
    torch.manual_seed(0)
    x = torch.randn(3, 16, dtype=torch.float64)
    ffn = FeedForward(ModelConfig(d_model=16, n_heads=2, ffn="swiglu", ffn_hidden=24)).double()
    W1, W3, W2 = ffn.w1.weight, ffn.w3.weight, ffn.w2.weight
    a = x @ W1.T
    torch.testing.assert_close(ffn(x), (a * torch.sigmoid(a) * (x @ W3.T)) @ W2.T)
    ffn = FeedForward(ModelConfig(d_model=16, n_heads=2, ffn="gelu", ffn_hidden=24)).double()
    h = x @ ffn.w1.weight.T
    torch.testing.assert_close(ffn(x), (0.5 * h * (1 + torch.erf(h / 2**0.5))) @ ffn.w2.weight.T)
