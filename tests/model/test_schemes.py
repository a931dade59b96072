"""Each residual scheme's sub-layer update against its equation from keel-paper.md, written out
here independently of keelctl.model.residual (float64, random norm gains)."""

from __future__ import annotations

import math

import pytest
import torch

from keelctl.model import ModelConfig, build_model

EPS = 1e-5


def rms_norm(v: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * gain


def make(residual: str, n_blocks: int = 4, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual=residual,
        d_model=16,
        n_heads=2,
        n_blocks=n_blocks,
        vocab_size=50,
        max_seq_len=32,
        **kw,
    )
    model = build_model(cfg).double()
    with torch.no_grad():  # random gains, so a missing or misplaced norm shows
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def gains(sub):
    g_in = getattr(sub.norm_in, "weight", None)
    g_out = sub.norm_out.weight if sub.norm_out is not None else None
    return g_in, g_out


def expected_update(residual: str, sub, x: torch.Tensor, i: int, n_blocks: int) -> torch.Tensor:
    F = sub.branch
    g_in, g_out = gains(sub)
    L = 2 * n_blocks
    if residual == "pre_ln":
        return x + F(rms_norm(x, g_in))
    if residual == "post_ln":
        return rms_norm(x + F(x), g_out)
    if residual == "deepnorm":
        a = (2 * n_blocks) ** 0.25
        return rms_norm(a * x + F(x), g_out)
    if residual == "keel":  # first block v2: attention Pre-LN, FFN with alpha = 1
        if i == 0:
            return x + F(rms_norm(x, g_in))
        alpha = 1.0 if i == 1 else L
        return rms_norm(alpha * x + F(rms_norm(x, g_in)), g_out)
    raise AssertionError(residual)


@pytest.mark.parametrize("residual", ["pre_ln", "post_ln", "deepnorm", "keel"])
def test_every_sublayer_update_matches_its_equation(residual):
    n_blocks = 4
    model = make(residual, n_blocks)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for i, sub in enumerate(model.sublayers):
        torch.testing.assert_close(
            sub(x), expected_update(residual, sub, x, i, n_blocks), rtol=1e-10, atol=1e-10
        )


def test_mix_ln_is_post_ln_for_first_quarter_of_blocks_then_pre_ln():
    model = make("mix_ln", n_blocks=8)
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    for i, sub in enumerate(model.sublayers):
        scheme = "post_ln" if i // 2 < 2 else "pre_ln"  # floor(0.25 * 8) = 2 blocks
        torch.testing.assert_close(
            sub(x), expected_update(scheme, sub, x, i, 8), rtol=1e-10, atol=1e-10
        )


def test_keel_alpha_defaults_to_number_of_sublayers_and_can_be_overridden():
    assert ModelConfig(residual="keel", n_blocks=6).keel_alpha == 12
    model = make("keel", n_blocks=3, alpha=2.5, keel_first_block="none")
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    sub = model.sublayers[3]
    g_in, g_out = gains(sub)
    torch.testing.assert_close(sub(x), rms_norm(2.5 * x + sub.branch(rms_norm(x, g_in)), g_out))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_alpha_must_be_positive(bad):
    with pytest.raises(ValueError):
        ModelConfig(alpha=bad)


# (alpha, has LN_out) of sub-layers 0, 1, 2 per first-block variant, L = 8; None = plain Pre-LN.
FIRST_BLOCK = {"v1": [None, None, 8.0], "v2": [None, 1.0, 8.0], "none": [8.0, 8.0, 8.0]}


@pytest.mark.parametrize("variant", FIRST_BLOCK)
def test_keel_first_block_rules(variant):
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    model = make("keel", n_blocks=4, keel_first_block=variant)
    for i, alpha in enumerate(FIRST_BLOCK[variant]):
        sub = model.sublayers[i]
        F, (g_in, g_out) = sub.branch, gains(sub)
        if alpha is None:
            want = x + F(rms_norm(x, g_in))
        else:
            want = rms_norm(alpha * x + F(rms_norm(x, g_in)), g_out)
        torch.testing.assert_close(sub(x), want, rtol=1e-10, atol=1e-10, msg=f"sub-layer {i}")


@pytest.mark.parametrize(
    "residual,final_norm,expected",
    [
        ("pre_ln", "auto", True),
        ("mix_ln", "auto", True),
        ("post_ln", "auto", False),
        ("deepnorm", "auto", False),
        ("keel", "auto", False),
        ("keel", True, True),
        ("pre_ln", False, False),
    ],
)
def test_final_norm_choice(residual, final_norm, expected):
    model = make(residual, final_norm=final_norm)
    assert (model.norm_f is not None) is expected


def test_deepnorm_scales_branch_weights_by_beta_at_init():
    # post_ln and deepnorm have the same modules, so the same seed draws the same weights.
    post, deep = make("post_ln", n_blocks=4), make("deepnorm", n_blocks=4)
    beta = (8 * 4) ** -0.25
    for sp, sd in zip(post.sublayers, deep.sublayers, strict=True):
        for name, w in sp.branch.named_parameters():
            scale = 1.0 if name.startswith(("wq", "wk")) else beta
            torch.testing.assert_close(dict(sd.branch.named_parameters())[name], scale * w)


def test_init_is_normal_with_init_std_and_unit_gains():
    torch.manual_seed(0)
    model = build_model(ModelConfig(residual="keel", d_model=128, n_blocks=2, init_std=0.05))
    w = torch.cat([p.flatten() for n, p in model.named_parameters() if p.dim() == 2])
    assert abs(w.std().item() - 0.05) < 0.002 and abs(w.mean().item()) < 0.002
    for n, p in model.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), n


def test_gradient_gain_formulas_agree_with_paper_brief():
    # The per-sub-layer skip-path gain of the norm Jacobian: alpha / sqrt(alpha^2 + 1).
    L = 1024
    keel_total = (L / math.sqrt(L**2 + 1)) ** L
    assert abs(keel_total - math.exp(-1 / (2 * L))) < 1e-6


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, rotate-half pairs (j, j + D/2) by angle pos * theta^(-2j/D)."""
    T, D = x.shape[-2], x.shape[-1]
    ang = torch.arange(T, dtype=x.dtype)[:, None] * theta ** (
        -2 * torch.arange(D // 2, dtype=x.dtype) / D
    )
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], dim=-1)


def hybridnorm_block(block, X: torch.Tensor) -> torch.Tensor:
    """Zhuo et al. 2025 (arXiv 2503.04598, and BryceZhuo/HybridNorm's OLMo block):
        Attn_QKV(X) = softmax(N(Q) N(K)^T / sqrt(d_h)) N(V) W_O, Q = X W_Q (per head), ...
        Y  = X + Attn_QKV(X)
        X' = Norm(Y) + FFN(Norm(Y))
    with N an RMSNorm per head dimension (its own gain for q, k, v), RoPE after N, GQA."""
    attn, ffn = block.attn.branch, block.ffn.branch
    B, T, d = X.shape
    H, KV = attn.n_heads, attn.n_kv_heads
    D = d // H
    gq, gk, gv = (n.weight for n in attn.qkv_norm)
    q = rms_norm(attn.wq(X).view(B, T, H, D), gq).transpose(1, 2)
    k = rms_norm(attn.wk(X).view(B, T, KV, D), gk).transpose(1, 2)
    v = rms_norm(attn.wv(X).view(B, T, KV, D), gv).transpose(1, 2)
    k, v = (t.repeat_interleave(H // KV, dim=1) for t in (k, v))
    q, k = rope(q, 1e4), rope(k, 1e4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
    Y = X + attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d))
    normed = rms_norm(Y, block.attn.norm_out.weight)  # the block's one norm
    return normed + ffn(normed)


def test_hybridnorm_blocks_match_the_authors_equations():
    n_blocks = 3
    model = make("hybridnorm", n_blocks, n_kv_heads=1)
    idx = torch.randint(0, 50, (2, 7))
    X = model.tok_emb(idx)
    for block in model.blocks:
        X = hybridnorm_block(block, X)
    # a final norm before the head, as in their OLMo models
    want = model.head(rms_norm(X, model.norm_f.weight))
    torch.testing.assert_close(model(idx), want, rtol=1e-6, atol=1e-8)


def test_qkv_norm_is_hybridnorms_by_default_and_a_switch_for_any_scheme():
    assert make("hybridnorm").blocks[0].attn.branch.qkv_norm is not None
    assert make("hybridnorm", qkv_norm=False).blocks[0].attn.branch.qkv_norm is None
    assert make("pre_ln").blocks[0].attn.branch.qkv_norm is None
    assert make("pre_ln", qkv_norm=True).blocks[0].attn.branch.qkv_norm is not None


@pytest.mark.parametrize("first_block", ["v2", "none"])
def test_keel_without_inner_norm_is_naive_residual_scaling(first_block):
    """keel_inner_norm=false: x' = LN(alpha*x + F(x)) above the first block (every sub-layer
    under `none`); a v2 first block keeps its Pre-LN attention and alpha = 1 FFN with LN_in."""
    L = 8
    model = make("keel", n_blocks=L // 2, keel_first_block=first_block, keel_inner_norm=False)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    for i, sub in enumerate(model.sublayers):
        F, (g_in, g_out) = sub.branch, gains(sub)
        if first_block == "v2" and i == 0:
            want = x + F(rms_norm(x, g_in))
        elif first_block == "v2" and i == 1:
            want = rms_norm(x + F(rms_norm(x, g_in)), g_out)
        else:
            assert g_in is None, f"sub-layer {i} still has LN_in"
            want = rms_norm(L * x + F(x), g_out)
        torch.testing.assert_close(sub(x), want, rtol=1e-10, atol=1e-10, msg=f"sub-layer {i}")


def test_keel_inner_norm_combines_with_alpha_and_defaults_on():
    assert ModelConfig().keel_inner_norm is True
    model = make("keel", n_blocks=3, alpha=3.0, keel_inner_norm=False)
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    sub = model.sublayers[4]
    torch.testing.assert_close(sub(x), rms_norm(3.0 * x + sub.branch(x), gains(sub)[1]))
