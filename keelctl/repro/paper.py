"""The paper's numbers that the reports print beside ours (arXiv 2601.19895; /work/shared brief).

Depths are in sub-layers (the paper's "layers"). Scores are lm-eval averages over 14 tasks, so
they sit beside our perplexities as the paper's evidence for the same claim, not as the same
quantity.
"""

from __future__ import annotations

SOURCE = 'Chen & Wei, "Post-LayerNorm Is Back: Stable, ExpressivE, and Deep", arXiv 2601.19895'

# Table 1: last LR before divergence, LR warmed 0 -> 5e-2 over 5000 steps; {depth: {scheme: lr}}
MAX_LR = {
    64: {"post_ln": 3.0e-4, "deepnorm": 3.5e-4, "pre_ln": 7.65e-3, "keel": 1.01e-2},
    512: {"post_ln": 2.8e-4, "deepnorm": 3.5e-4, "pre_ln": 4.67e-3, "keel": 6.31e-3},
}
MAX_LR_RAMP = "0 -> 5e-2 over 5000 steps"

# Table 2: average score at 512 sub-layers per learning rate.
LR_SWEEP_DEPTH = 512
LR_SWEEP = {
    1.5e-3: {"pre_ln": 49.5, "keel": 50.5},
    3e-3: {"pre_ln": 49.4, "keel": 52.7},
    6e-3: {"pre_ln": 52.3, "keel": 55.5},
}

# Table 3: average score per depth.
DEPTH_SWEEP = {
    64: {"pre_ln": 37.9, "keel": 39.6},
    128: {"pre_ln": 45.3, "keel": 46.5},
    512: {"pre_ln": 54.3, "keel": 58.1},
    1024: {"pre_ln": 57.9, "keel": 60.9},
}

# Appendix A / Figure 6 (layer redundancy), in words: the paper gives no table.
REDUNDANCY = {
    "first": "the first layer(s) are critical (ΔPPL > 1e4 when removed)",
    "shallow": "Keel's shallow layers are less redundant (larger ΔPPL) than Pre-LN's",
    "trend": "after the first layers, ΔPPL grows with the layer's depth",
}

# The gradient view (section 3): skip-path gain over L sub-layers, top to bottom.
GRAD_FLOW = (
    "Post-LN's gradient at the bottom shrinks about 2^(-L/2); Keel's skip gain "
    "(alpha/sqrt(alpha^2+1))^L with alpha = L is about exp(-1/(2L)), near 1 at any depth"
)


def paper_scores(table: dict, key, scheme: str) -> str:
    row = table.get(key)
    return f"{row[scheme]:g}" if row else "n/a"
