"""The decoder-only LM: embedding, blocks of two sub-layers, optional final norm, head."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from keelctl.model.config import ModelConfig
from keelctl.model.layers import (
    Attention,
    FeedForward,
    RMSNorm,
    autocast_off,
    rope_inv_freq,
    rope_tables,
    rounded,
)
from keelctl.model.residual import Rule, branch_init_scale, sublayer_rules, uses_final_norm

# ModelConfig's stream_dtype / norm_dtype: what a value is rounded to (None: kept as computed)
SIMULATED = {"fp32": None, "bf16": torch.bfloat16}


def widened(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 or wider: the dtype of the residual stream under every precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def compute_dtype(branch: nn.Module) -> torch.dtype:
    """The dtype the branch's weights compute in: bf16 under FSDP's bf16 param_dtype, else
    their own (fp32; bf16 autocast then casts inside each matmul)."""
    return branch.branch_weights()[0].weight.dtype


class Sublayer(nn.Module):
    """One residual connection: x' = LN_out(alpha * x + F(LN_in(x))) (see residual.py).

    Precision policy, the same for every scheme (docs/scale.md): the residual stream x, the
    skip sum and both norms are fp32 or wider, and so is the output; only the branch F runs in
    its compute dtype. In bf16 a Keel update, about 1/alpha of the normalised stream, would be
    below the spacing of the numbers it is added to (2^-8 near 1) and vanish. The config's
    stream_dtype / norm_dtype bf16 simulate such an implementation by rounding (layers.rounded):
    the skip sum and the output to bf16, LN_out's gain to bf16."""

    def __init__(self, kind: str, branch: nn.Module, rule: Rule, cfg: ModelConfig):
        super().__init__()
        self.kind, self.branch, self.rule = kind, branch, rule
        self.norm_in = RMSNorm(cfg.d_model, eps=cfg.norm_eps) if rule.norm_in else nn.Identity()
        gain_dtype = SIMULATED[cfg.norm_dtype]
        self.norm_out = (
            RMSNorm(cfg.d_model, eps=cfg.norm_eps, gain_dtype=gain_dtype) if rule.norm_out else None
        )
        self.stream_dtype = SIMULATED[cfg.stream_dtype]
        self.norm_branch = RMSNorm(cfg.d_model, eps=cfg.norm_eps) if rule.norm_branch else None

    def forward(self, x: torch.Tensor, **branch_kwargs) -> torch.Tensor:
        """branch_kwargs go to F (attention's `kv`: a KV cache layer while generating)."""
        x = widened(x)
        h = self.norm_in(x)
        if self.rule.in_scale != 1:  # LayerNorm Scaling, in the stream's wide dtype
            h = h * self.rule.in_scale
        f = self.branch(h.to(compute_dtype(self.branch)), **branch_kwargs)
        if self.norm_branch is not None:  # Peri-LN: F's output normalised, in fp32
            f = self.norm_branch(f)
        if self.norm_out is None:
            return rounded(x + f, self.stream_dtype)  # promotes a bf16 F to x's wide dtype
        with autocast_off(x.device.type):
            s = torch.add(f, x, alpha=self.rule.alpha)  # alpha*x + F: one pass, in x's dtype
            s = rounded(s, self.stream_dtype)
            return rounded(self.norm_out(s), self.stream_dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, x' = {self.rule.equation}"


class Block(nn.Module):
    """Attention sub-layer then FFN sub-layer; the unit FSDP wraps and checkpointing recomputes."""

    def __init__(self, attn: Sublayer, ffn: Sublayer):
        super().__init__()
        self.attn, self.ffn = attn, ffn

    def forward(
        self, x: torch.Tensor, skip_attn: bool = False, skip_ffn: bool = False, kv=None, rope=None
    ):
        if not skip_attn:
            x = self.attn(x, kv=kv, rope=rope)
        if not skip_ffn:
            x = self.ffn(x)
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        rules = sublayer_rules(cfg)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.norm_emb = RMSNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.embedding_norm else None
        self.blocks = nn.ModuleList(
            Block(
                Sublayer("attn", Attention(cfg), rules[2 * b], cfg),
                Sublayer("ffn", FeedForward(cfg), rules[2 * b + 1], cfg),
            )
            for b in range(cfg.n_blocks)
        )
        self.norm_f = (
            RMSNorm(cfg.d_model, eps=cfg.norm_eps) if uses_final_norm(cfg, rules) else None
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    @property
    def sublayers(self) -> list[Sublayer]:
        """All sub-layers bottom first: attn, ffn, attn, ... (the paper's "layers")."""
        return [s for block in self.blocks for s in (block.attn, block.ffn)]

    def reset_parameters(self) -> None:
        """N(0, init_std^2) for every linear and embedding weight, norm gains 1, DeepNorm's b."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        beta = branch_init_scale(self.config)
        if beta != 1.0:
            with torch.no_grad():
                for sub in self.sublayers:
                    for linear in sub.branch.branch_weights():
                        linear.weight.mul_(beta)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream entering sub-layer 0: fp32 or wider even from a bf16 table;
        normalised (LN_E) where the config's embedding_norm asks."""
        x = widened(self.tok_emb(idx))
        if self.norm_emb is not None:
            x = self.norm_emb(x)
        return rounded(x, SIMULATED[self.config.stream_dtype])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm (where the scheme has one) and the LM head on the residual stream."""
        h = self.norm_f(x) if self.norm_f is not None else x
        return self.head(h.to(self.head.weight.dtype))

    def forward(
        self, idx: torch.Tensor, skip: Iterable[int] | None = None, cache=None
    ) -> torch.Tensor:
        """Logits (B, T, V). Sub-layers listed in `skip` are removed: x' = x. With `cache` (a
        keelctl.generate.KVCache) idx holds only tokens not yet in it; they are added to it."""
        skip = set(skip or ())
        bad = [i for i in skip if not 0 <= i < self.config.n_sublayers]
        if bad:
            raise ValueError(f"skip indices {sorted(bad)} outside 0..{self.config.n_sublayers - 1}")
        kv = cache.extend(idx.shape[1]) if cache is not None else [None] * len(self.blocks)
        x = self.embed(idx)
        positions = None if cache is None else kv[0].positions
        # RoPE's cos/sin once per forward for all layers, at the stream's width (fp32 or wider)
        rope = rope_tables(self.inv_freq, idx.shape[1], positions, x.dtype)
        for b, block in enumerate(self.blocks):
            x = block(x, skip_attn=2 * b in skip, skip_ffn=2 * b + 1 in skip, kv=kv[b], rope=rope)
        return self.logits(x)


def build_model(cfg: ModelConfig | dict) -> Transformer:
    """Build a freshly initialised model from a ModelConfig (or its dict form)."""
    return Transformer(cfg if isinstance(cfg, ModelConfig) else ModelConfig(**cfg))


def count_parameters(model: nn.Module) -> int:
    """Unique trainable parameters (a tied head counts once)."""
    return sum(p.numel() for p in model.parameters())
