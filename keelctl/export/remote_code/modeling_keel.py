"""A keelctl model for Hugging Face transformers (written by `keelctl export --format hf`).

Standalone: needs torch and transformers only. The math is keelctl's, for every residual
scheme: each sub-layer is x' = LN_out(alpha * x + LN_F(F(s * LN_in(x)))) with the rule of
config.json's `sublayer_rules`; the residual stream, the skip sum and every RMSNorm run in
fp32 (or wider) whatever the branch dtype; causal attention with RoPE (rotate-half),
grouped-query heads and optional per-head q/k/v norms (HybridNorm); an optional final norm;
keys and values kept in transformers' cache while generating.
Parameter names are keelctl's, so model.safetensors is keelctl's state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_keel import KeelConfig

# transformers 5 names the cache `cache`; 4.x named it `past_key_values`.
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def widened(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain, computed in fp32 or wider and returned in that dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = widened(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_rotate(x: torch.Tensor, inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; x (B, H, T, D), positions (B, T); angles in fp32 or wider."""
    wide = torch.promote_types(x.dtype, torch.float32)
    angles = (positions.to(wide).unsqueeze(-1) * inv_freq.to(wide)).unsqueeze(1)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KeelAttention(nn.Module):
    def __init__(self, config: KeelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.wq = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        # HybridNorm's per-head RMSNorm of q, k, v (before RoPE)
        self.qkv_norm = (
            nn.ModuleList(RMSNorm(self.head_dim, config.rms_norm_eps) for _ in range(3))
            if config.qkv_norm
            else None
        )
        self.rope_theta = config.rope_theta

    def inv_freq(self, device) -> torch.Tensor:
        # Made per call, not a buffer: from_pretrained leaves non-persistent buffers unset.
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        return self.rope_theta ** -(exponent / self.head_dim)

    def forward(self, x, positions, mask, cache):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qkv_norm is not None:
            q, k, v = (n(t).to(t.dtype) for n, t in zip(self.qkv_norm, (q, k, v), strict=True))
        inv_freq = self.inv_freq(x.device)
        q, k = rope_rotate(q, inv_freq, positions), rope_rotate(k, inv_freq, positions)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.n_kv_heads != self.n_heads:  # grouped-query attention
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1
        )
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class KeelFeedForward(nn.Module):
    """swiglu: w2(silu(w1 x) * w3 x); gelu: w2(gelu(w1 x)). No biases."""

    def __init__(self, config: KeelConfig):
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.gated = config.ffn == "swiglu"
        self.w1 = nn.Linear(d, h, bias=False)
        self.w3 = nn.Linear(d, h, bias=False) if self.gated else None
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x, *_):
        if self.gated:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


class KeelSublayer(nn.Module):
    """x' = LN_out(alpha * x + LN_F(F(s * LN_in(x)))); a missing norm is the identity, s is 1
    but for LayerNorm Scaling (lns), LN_F exists for Peri-LN only."""

    def __init__(self, branch: nn.Module, rule: dict, config: KeelConfig):
        super().__init__()
        self.branch, self.alpha = branch, float(rule["alpha"])
        self.in_scale = float(rule.get("in_scale", 1.0))
        eps = config.rms_norm_eps
        self.norm_in = RMSNorm(config.hidden_size, eps) if rule["norm_in"] else None
        self.norm_out = RMSNorm(config.hidden_size, eps) if rule["norm_out"] else None
        has_branch_norm = rule.get("norm_branch", False)
        self.norm_branch = RMSNorm(config.hidden_size, eps) if has_branch_norm else None

    def forward(self, x, positions, mask, cache):
        x = widened(x)  # the residual stream is fp32 (or wider) under every precision
        h = self.norm_in(x) if self.norm_in is not None else x
        if self.in_scale != 1:
            h = h * self.in_scale
        f = self.branch(h.to(next(self.branch.parameters()).dtype), positions, mask, cache)
        if self.norm_branch is not None:
            f = self.norm_branch(f)
        if self.norm_out is None:
            return x + f
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.norm_out(torch.add(f, x, alpha=self.alpha))  # fp32 skip sum


class KeelBlock(nn.Module):
    def __init__(self, config: KeelConfig, b: int):
        super().__init__()
        rules = config.sublayer_rules
        self.attn = KeelSublayer(KeelAttention(config, b), rules[2 * b], config)
        self.ffn = KeelSublayer(KeelFeedForward(config), rules[2 * b + 1], config)

    def forward(self, x, positions, mask, cache):
        return self.ffn(self.attn(x, positions, mask, cache), positions, mask, None)


class KeelPreTrainedModel(PreTrainedModel):
    config_class = KeelConfig
    base_model_prefix = "keel"
    _no_split_modules = ["KeelBlock"]
    # Every norm gain stays fp32 when loaded with dtype=torch.bfloat16 (or float16): a Keel
    # LN_out gain multiplies the residual stream, and rounding its small learned deviations
    # from 1 compounds over depth (keelctl's docs/scale.md, precision). _strict: bf16 too.
    _keep_in_fp32_modules = _keep_in_fp32_modules_strict = [
        "norm_in",
        "norm_out",
        "norm_branch",
        "norm_f",
        "qkv_norm",
    ]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


def _attention_mask(attention_mask, past: int, T: int, device) -> torch.Tensor | None:
    """(B, 1, T, past+T) bool: causal and not padding; None when plain causal will do."""
    if attention_mask is None or bool(attention_mask.all()):
        if past == 0 or T == 1:
            return None  # sdpa's is_causal (T > 1) or no mask at all (one new token)
        attention_mask = torch.ones(1, past + T, dtype=torch.long, device=device)
    S = past + T
    keys = torch.arange(S, device=device)
    queries = torch.arange(past, S, device=device)
    causal = keys.view(1, 1, -1) <= queries.view(1, -1, 1)
    real = attention_mask[:, -S:].bool().unsqueeze(1)  # (B, 1, S)
    itself = keys.view(1, 1, -1) == queries.view(1, -1, 1)  # padding queries see themselves
    return ((causal & real) | itself).unsqueeze(1)


class KeelForCausalLM(KeelPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"head.weight": "tok_emb.weight"}

    def __init__(self, config: KeelConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        has_norm_emb = getattr(config, "embedding_norm", False)  # absent from older exports
        self.norm_emb = RMSNorm(config.hidden_size, config.rms_norm_eps) if has_norm_emb else None
        self.blocks = nn.ModuleList(KeelBlock(config, b) for b in range(config.num_hidden_layers))
        self.norm_f = (
            RMSNorm(config.hidden_size, config.rms_norm_eps) if config.final_norm else None
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, value):
        self.head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:  # left padding: count from each row's first token
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        mask = _attention_mask(attention_mask, past, T, input_ids.device)
        x = widened(self.tok_emb(input_ids))
        if self.norm_emb is not None:
            x = self.norm_emb(x)
        for block in self.blocks:
            x = block(x, position_ids, mask, cache if use_cache else None)
        h = self.norm_f(x) if self.norm_f is not None else x
        logits = self.head(h.to(self.head.weight.dtype))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None}
        )
