"""The paper's numbers that the reports print beside ours, as PAPER_* constants: Chen & Wei,
"Post-LayerNorm Is Back: Stable, ExpressivE, and Deep", arXiv 2601.19895 (/work/shared brief).

Depths are in sub-layers (the paper's "layers"). Scores are lm-eval averages over 14 tasks, so
they sit beside our perplexities as the paper's evidence for the same claim, not as the same
quantity.
"""

from __future__ import annotations

# Table 1: last LR before divergence, LR warmed 0 -> 5e-2 over 5000 steps; {depth: {scheme: lr}}
PAPER_MAX_LR = {
    64: {"post_ln": 3.0e-4, "deepnorm": 3.5e-4, "pre_ln": 7.65e-3, "keel": 1.01e-2},
    512: {"post_ln": 2.8e-4, "deepnorm": 3.5e-4, "pre_ln": 4.67e-3, "keel": 6.31e-3},
}
PAPER_MAX_LR_RAMP = "0 -> 5e-2 over 5000 steps"

# Table 2: average score at 512 sub-layers per learning rate.
PAPER_LR_SWEEP_DEPTH = 512
PAPER_LR_SWEEP = {
    1.5e-3: {"pre_ln": 49.5, "keel": 50.5},
    3e-3: {"pre_ln": 49.4, "keel": 52.7},
    6e-3: {"pre_ln": 52.3, "keel": 55.5},
}

# Table 3: average score per depth.
PAPER_DEPTH_SWEEP = {
    64: {"pre_ln": 37.9, "keel": 39.6},
    128: {"pre_ln": 45.3, "keel": 46.5},
    512: {"pre_ln": 54.3, "keel": 58.1},
    1024: {"pre_ln": 57.9, "keel": 60.9},
}

# Appendix A / Figure 6 (layer redundancy), in words: the paper gives no table.
PAPER_REDUNDANCY = {
    "first": "the first layer(s) are critical (ΔPPL > 1e4 when removed)",
    "shallow": "Keel's shallow layers are less redundant (larger ΔPPL) than Pre-LN's",
    "trend": "after the first layers, ΔPPL grows with the layer's depth",
}

# The gradient view (section 3): skip-path gain over L sub-layers, top to bottom.
PAPER_GRAD_FLOW = (
    "Post-LN's gradient at the bottom shrinks about 2^(-L/2); Keel's skip gain "
    "(alpha/sqrt(alpha^2+1))^L with alpha = L is about exp(-1/(2L)), near 1 at any depth"
)

# design: what the paper (and section 4.2's design path) says of each of Keel's choices, in
# words; the skip-path gain per sub-layer is alpha/sqrt(alpha^2+1) (the gradient view).
PAPER_DESIGN = {
    "keel": "Keel as published: LN_out(alpha*x + F(LN_in(x))), alpha = L fixed (not learned), "
    "v2 first block; skip gain about exp(-1/(2L)) over L sub-layers, near 1 at any depth",
    "naive": "section 4.2's naive residual scaling LN(alpha*x + F(x)), a step before Keel; the "
    "inner norm is what keeps the gradient through the branch healthy",
    "alpha-1": "alpha = 1: skip gain 1/sqrt(2) per sub-layer, about 2^(-L/2) over L (Post-LN's)",
    "alpha-L0.25": "alpha = L^(1/4), DeepNorm's order: skip gain still about exp(-sqrt(L)/2)",
    "alpha-L0.5": "alpha = sqrt(L): not discussed; the paper's choice is alpha = L",
    "first-v1": "the paper's v1: the whole first block Pre-LN (v2, the default, keeps a Pre-LN "
    "attention and an alpha = 1 FFN)",
    "first-none": "not in the paper: both versions treat the first block specially",
    "final-norm": "unstated (every Keel sub-layer already ends in a norm)",
}

# The paper column of the protocols it has no number for.
PAPER_PRECISION = "not measured: the paper does not say; the public implementations run bf16"
PAPER_HOPS = "untested there; its largest gains are on multi-step tasks (appendix B)"


def paper_avg(table: dict, key) -> tuple[str, str, str | None]:
    """A Table 2 or 3 row at `key`: Keel's and Pre-LN's average score (a report table's two
    columns, "n/a" where the paper has none) and the two in words (None there)."""
    row = table.get(key)
    if not row:
        return "n/a", "n/a", None
    words = f"avg score keel {row['keel']} vs pre_ln {row['pre_ln']}"
    return f"{row['keel']:g}", f"{row['pre_ln']:g}", words
