"""Gradient flow, theory: the skip-path gain each residual scheme gives the gradient on its way
down the stack (plot-grads' dashed curves, the live tracker view, repro's readings). Recording
is keelctl/train/grad_recording.py, analysis keelctl/analysis/grad_flow.py."""

from __future__ import annotations

import math

import numpy as np

from keelctl.model.config import ModelConfig
from keelctl.model.residual import Rule, sublayer_rules


def skip_gain(rule: Rule) -> float:
    """Gain of one sub-layer's skip path when |F(x)| ~ |x| and F is orthogonal to x:
    LN_out(alpha*x + F) divides by |alpha*x + F| ~ sqrt(alpha^2 + 1)|x|, so the skip passes
    alpha/sqrt(alpha^2 + 1) (Post-LN: 1/sqrt(2)); without an outer norm it passes 1 (Pre-LN, and
    Peri-LN and LayerNorm Scaling, whose norms and scale sit on the branch alone)."""
    return rule.alpha / math.sqrt(rule.alpha**2 + 1) if rule.norm_out else 1.0


def theory_gain(cfg: ModelConfig) -> np.ndarray:
    """(L,) skip-path gain from the top of the stack down to the input of sub-layer l: the
    product of skip_gain over sub-layers l..L-1. Post-LN 2^(-(L-l)/2); Keel
    (alpha/sqrt(alpha^2+1))^(L-l) above its first block; DeepNorm the same with its a; Pre-LN,
    Peri-LN, LNS 1."""
    gains = np.array([skip_gain(rule) for rule in sublayer_rules(cfg)])
    return np.cumprod(gains[::-1])[::-1]


def theory_label(cfg: ModelConfig) -> str:
    L = cfg.n_sublayers
    formula = {
        "pre_ln": "1",
        "post_ln": "2^(-(L-l)/2)",
        "keel": f"(α/√(α²+1))^(L-l), α={cfg.keel_alpha:g}",
        "deepnorm": "(a/√(a²+1))^(L-l), a=(2N)^¼=" + f"{sublayer_rules(cfg)[0].alpha:.3g}",
        "mix_ln": "2^(-1/2) per Post-LN sub-layer",
        "hybridnorm": "2^(-1/2) per attention sub-layer (its outer norm)",
        "peri_ln": "1 (identity skip; LN_F only bounds each update)",
        "lns": "1 (identity skip; 1/√b scales the branch input only)",
    }[cfg.residual]
    return f"theory {cfg.residual} L={L}: {formula}"
