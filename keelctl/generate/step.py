"""The one-token decoding step, without the model's per-module overhead.

At width 64 a cached step is made of fixed costs: nn.Module calls, dtype checks and casts,
autocast checks and one small torch call per projection cost as much as the arithmetic
(docs/generate.md). `lean_step(model)` reads each sub-layer's rule (residual.Rule) and weights
once per decode call, packs each attention's q, k, v projections into one matrix and each
SwiGLU's w1, w3 into one, and runs the equations of transformer.Sublayer and layers.Attention /
FeedForward with torch functions directly: the same operations on the same numbers in the
same order, so its logits equal model(token, cache=cache)'s bit for bit on CPU
(tests/generate/test_step.py). It covers a transformer.Transformer whose weights are all of
one dtype, fp32 or wider, with autocast off (keelctl's fp32 weights); for anything else (bf16
autocast, bf16 weights, another module) it returns None and the decode loop calls the model.
The packed copies live for one decode call and hold about 2/3 of the blocks' weights again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from keelctl.generate.cache import KVCache, LayerKV
from keelctl.model.config import ModelConfig
from keelctl.model.layers import RMSNorm, rope_rotate, rope_tables, rounded
from keelctl.model.residual import Rule
from keelctl.model.transformer import Block, Sublayer, Transformer


def gain(norm: nn.Module | None) -> torch.Tensor | None:
    """The gain layers.RMSNorm multiplies by (rounded as its gain_dtype says); None: no norm."""
    return rounded(norm.weight, norm.gain_dtype) if isinstance(norm, RMSNorm) else None


@dataclass(frozen=True)
class Residual:
    """One Sublayer's x' = LN_out(alpha*x + LN_F(F(s*LN_in(x)))), split around its branch F."""

    rule: Rule
    gain_in: torch.Tensor | None
    gain_branch: torch.Tensor | None
    gain_out: torch.Tensor | None
    shape: tuple[int, ...]
    eps: float
    stream_dtype: torch.dtype | None

    @classmethod
    def of(cls, sub: Sublayer, cfg: ModelConfig) -> Residual:
        gains = (gain(sub.norm_in), gain(sub.norm_branch), gain(sub.norm_out))
        return cls(sub.rule, *gains, (cfg.d_model,), cfg.norm_eps, sub.stream_dtype)

    def branch_input(self, x: torch.Tensor) -> torch.Tensor:
        """s * LN_in(x)."""
        h = x if self.gain_in is None else F.rms_norm(x, self.shape, self.gain_in, self.eps)
        return h if self.rule.in_scale == 1 else h * self.rule.in_scale

    def output(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """LN_out(alpha * x + LN_F(f)), the stream rounded as the config simulates."""
        if self.gain_branch is not None:
            f = F.rms_norm(f, self.shape, self.gain_branch, self.eps)
        if self.gain_out is None:
            return rounded(x + f, self.stream_dtype)
        s = rounded(torch.add(f, x, alpha=self.rule.alpha), self.stream_dtype)
        return rounded(F.rms_norm(s, self.shape, self.gain_out, self.eps), self.stream_dtype)


@dataclass(frozen=True)
class LeanBlock:
    """One Block's weights, packed for one-token steps."""

    attn: Residual
    ffn: Residual
    wqkv: torch.Tensor  # rows: q heads, then k heads, then v heads
    wo: torch.Tensor
    qkv_gains: tuple[torch.Tensor, ...] | None  # HybridNorm's per-head norms of q, k, v
    w_in: torch.Tensor  # SwiGLU: w1 rows then w3 rows; GELU: w1
    w2: torch.Tensor
    gated: bool

    @classmethod
    def of(cls, block: Block, cfg: ModelConfig) -> LeanBlock:
        attn, ffn = block.attn.branch, block.ffn.branch
        norms = attn.qkv_norm
        return cls(
            Residual.of(block.attn, cfg),
            Residual.of(block.ffn, cfg),
            torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]),
            attn.wo.weight,
            None if norms is None else tuple(gain(n) for n in norms),
            torch.cat([ffn.w1.weight, ffn.w3.weight]) if ffn.gated else ffn.w1.weight,
            ffn.w2.weight,
            ffn.gated,
        )

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = F.linear(h, self.w_in).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, self.w2)
        return F.linear(F.gelu(F.linear(h, self.w_in)), self.w2)


class LeanStep:
    """model(token, cache=cache) for one token per row, as a plain loop over packed weights."""

    def __init__(self, model: Transformer):
        cfg = model.config
        self.model, self.eps = model, cfg.norm_eps
        self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.blocks = [LeanBlock.of(block, cfg) for block in model.blocks]

    def __call__(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, 1, V) for token (B, 1); its keys and values join the cache."""
        layers = cache.extend(1)
        x = self.model.embed(token)
        rope = rope_tables(self.model.inv_freq, 1, layers[0].positions, x.dtype)
        for block, kv in zip(self.blocks, layers, strict=True):
            h = block.attn.branch_input(x)
            x = block.attn.output(x, self.attention(block, h, kv, rope))
            h = block.ffn.branch_input(x)
            x = block.ffn.output(x, block.feed_forward(h))
        return self.model.logits(x)

    def attention(
        self, block: LeanBlock, h: torch.Tensor, kv: LayerKV, rope: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """layers.Attention.forward for one new token per row, with one q/k/v projection."""
        B, H, K, D = h.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = F.linear(h, block.wqkv).view(B, 1, H + 2 * K, D).transpose(1, 2)
        if block.qkv_gains is None:  # RoPE on q and k at once: elementwise, the same numbers
            qk = rope_rotate(qkv[:, : H + K], *rope)
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + K :]
        else:
            q, k, v = (
                F.rms_norm(t, (D,), g, self.eps)
                for t, g in zip(qkv.split((H, K, K), dim=1), block.qkv_gains, strict=True)
            )
            q, k = rope_rotate(q, *rope), rope_rotate(k, *rope)
        k, v = kv.append(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=kv.mask, enable_gqa=K != H)
        return F.linear(y.transpose(1, 2).reshape(B, 1, H * D), block.wo)


def lean_step(model: nn.Module) -> LeanStep | None:
    """The lean one-token step where it computes what the model does (see the module's
    docstring), else None."""
    if not isinstance(model, Transformer):
        return None
    dtypes = {p.dtype for p in model.parameters()}
    device = next(model.parameters()).device.type
    if len(dtypes) != 1 or torch.is_autocast_enabled(device):
        return None
    (dtype,) = dtypes
    return LeanStep(model) if torch.promote_types(dtype, torch.float32) == dtype else None
