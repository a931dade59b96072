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
