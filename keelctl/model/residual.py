"""The eight residual schemes, side by side. Every sub-layer update is one instance of

    x' = LN_out( alpha * x + LN_F( F( s * LN_in(x) ) ) )

where a scheme picks alpha, the input scale s (1 but for lns) and which of the three norms
exist (a missing norm is the identity):

    pre_ln    x' = x + F(LN(x))                      alpha = 1, LN_in only
    post_ln   x' = LN(x + F(x))                      alpha = 1, LN_out only
    deepnorm  x' = LN(a*x + F(x))                    a = (2N)^(1/4), LN_out only,
                                                     branch weights * b = (8N)^(-1/4) at init
    keel      x' = LN_out(alpha*x + F(LN_in(x)))     alpha = L (all sub-layers), both norms;
              x' = LN(alpha*x + F(x))                keel_inner_norm false (naive scaling)
    mix_ln    post_ln for the first mix_ln_fraction of blocks, pre_ln after
    hybridnorm attention  x' = LN(x + Attn_QKV(x))     Attn_QKV normalises q, k, v per head
               FFN        x' = x + FFN(x)               (ModelConfig.qkv_norm, on by default)
    peri_ln   x' = x + LN_F(F(LN_in(x)))             LN_in and LN_F (the branch's output norm)
    lns       x' = x + F(LN_in(x) / sqrt(b))         s = 1/sqrt(b), b the block counted from 1,
                                                     on both sub-layers of block b

N = n_blocks, L = n_sublayers = 2N. Keel's first block (paper v2): the first attention sub-layer
is Pre-LN and the first FFN uses alpha = 1; v1 makes the whole first block Pre-LN.
keel_inner_norm = false (the naive residual scaling step of the paper's section 4.2) drops LN_in
from every sub-layer with Keel's alpha (all of them under `none`); a v1/v2 first block keeps its
rules (a Pre-LN sub-layer without LN_in would have no norm at all): only keel_first_block
changes it.

HybridNorm (Zhuo et al. 2025, arXiv 2503.04598, and their code) writes a block as
    Y = X + Attn_QKV(X),    X' = Norm(Y) + FFN(Norm(Y)):
QKV normalisation in attention, Post-Norm for the FFN. Its one norm per block is the same
function whether it ends the attention sub-layer (as here) or starts the FFN sub-layer (as in
their code), so the model computes exactly their block; only what "removing one sub-layer"
means differs (removing attention here removes the norm too). Their HybridNorm* variant (a
Pre-Norm first block) is not offered.

Peri-LN (Kim et al. 2025, arXiv 2502.02732) is OLMo-core's PeriNormTransformerBlock and Gemma 2's
sandwich: x + post_norm(F(pre_norm(x))); every gain starts at 1 (OLMo-core builds both norms from
one LayerNormConfig; Gemma 2's (1 + w) starts at w = 0), and a final norm precedes the head.
Each update has RMS about 1 from the start, so an embedding at init_std is swamped: OLMo-core
offers a norm on the embedding output (ModelConfig.embedding_norm, off by default here as there),
Gemma scales the embedding by sqrt(d_model).
LayerNorm Scaling (Sun et al. 2025, arXiv 2502.05795; lmsdss/LayerNorm-Scaling, norm type LNS,
and OLMo-core's LayerNormScaledTransformerBlock) multiplies the pre-norm's output, gain
included, by 1/sqrt(layer_index + 1) with layer_index the 0-based block: both sub-layers of a
block share one scale. Gains start at 1, the final norm stays (it is Pre-LN otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config validates itself with sublayer_rules: no import back at run time
    from keelctl.model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    """How one sub-layer combines its skip x and its branch F."""

    alpha: float
    norm_in: bool
    norm_out: bool
    norm_branch: bool = False  # LN_F on F's output (Peri-LN)
    in_scale: float = 1.0  # s, times LN_in(x) before F (LayerNorm Scaling)

    @property
    def equation(self) -> str:
        skip = "x" if self.alpha == 1 else f"{self.alpha:g}*x"
        inner = "LN_in(x)" if self.norm_in else "x"
        if self.in_scale != 1:
            inner = f"{self.in_scale:.4g}*{inner}"
        branch = f"LN_F(F({inner}))" if self.norm_branch else f"F({inner})"
        return f"LN_out({skip} + {branch})" if self.norm_out else f"{skip} + {branch}"


PRE_LN = Rule(alpha=1.0, norm_in=True, norm_out=False)
POST_LN = Rule(alpha=1.0, norm_in=False, norm_out=True)
PLAIN = Rule(alpha=1.0, norm_in=False, norm_out=False)
PERI_LN = Rule(alpha=1.0, norm_in=True, norm_out=False, norm_branch=True)


def deepnorm_alpha(n_blocks: int) -> float:
    return (2 * n_blocks) ** 0.25


def deepnorm_beta(n_blocks: int) -> float:
    return (8 * n_blocks) ** -0.25


def _keel(cfg: ModelConfig, i: int) -> Rule:
    first_block = i < 2
    if first_block and cfg.keel_first_block == "v1":
        return PRE_LN
    if first_block and cfg.keel_first_block == "v2":
        return PRE_LN if i == 0 else Rule(alpha=1.0, norm_in=True, norm_out=True)
    return Rule(alpha=cfg.keel_alpha, norm_in=cfg.keel_inner_norm, norm_out=True)


def _mix_ln(cfg: ModelConfig, i: int) -> Rule:
    n_post_blocks = math.floor(cfg.mix_ln_fraction * cfg.n_blocks)
    return POST_LN if i // 2 < n_post_blocks else PRE_LN


def lns_scale(block: int) -> float:
    """LayerNorm Scaling's 1/sqrt(l), l = block + 1 (the block counted from 1)."""
    return 1.0 / math.sqrt(block + 1)


_SCHEMES = {
    "pre_ln": lambda cfg, i: PRE_LN,
    "post_ln": lambda cfg, i: POST_LN,
    "deepnorm": lambda cfg, i: Rule(deepnorm_alpha(cfg.n_blocks), norm_in=False, norm_out=True),
    "keel": _keel,
    "mix_ln": _mix_ln,
    "hybridnorm": lambda cfg, i: POST_LN if i % 2 == 0 else PLAIN,
    "peri_ln": lambda cfg, i: PERI_LN,
    "lns": lambda cfg, i: Rule(alpha=1.0, norm_in=True, norm_out=False, in_scale=lns_scale(i // 2)),
}


def sublayer_rules(cfg: ModelConfig) -> list[Rule]:
    """One rule per sub-layer, bottom first (attention, FFN, attention, ...)."""
    return [_SCHEMES[cfg.residual](cfg, i) for i in range(cfg.n_sublayers)]


def branch_init_scale(cfg: ModelConfig) -> float:
    """DeepNorm scales v, attention-out and FFN weights by b at init; other schemes keep 1."""
    return deepnorm_beta(cfg.n_blocks) if cfg.residual == "deepnorm" else 1.0


def uses_final_norm(cfg: ModelConfig, rules: list[Rule]) -> bool:
    """auto: a final norm before the head unless the last sub-layer already ends in a norm."""
    if cfg.final_norm == "auto":
        return not rules[-1].norm_out
    return bool(cfg.final_norm)
