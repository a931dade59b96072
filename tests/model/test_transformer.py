"""Whole-model behaviour: shapes, causality, parameter count, skipping, depth, bf16 numerics."""

from __future__ import annotations

import pytest
import torch

from keelctl.model import RESIDUALS, ModelConfig, build_model, count_parameters


def tiny(residual="keel", **kw) -> ModelConfig:
    base = dict(
        residual=residual,
        vocab_size=61,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_blocks=3,
        max_seq_len=32,
    )
    return ModelConfig(**{**base, **kw})


def test_three_lines_build_any_scheme_and_return_logits():
    for residual in RESIDUALS:
        model = build_model(tiny(residual))
        assert model(torch.randint(0, 61, (2, 9))).shape == (2, 9, 61)
        assert [s.kind for s in model.sublayers] == ["attn", "ffn"] * 3


@pytest.mark.parametrize("residual", RESIDUALS)
def test_causality_changing_token_t_changes_no_earlier_logit(residual):
    torch.manual_seed(0)
    model = build_model(tiny(residual)).double()
    idx = torch.randint(0, 61, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 61
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-6


@pytest.mark.parametrize(
    "residual,ffn,tie",
    [
        ("keel", "swiglu", False),
        ("pre_ln", "gelu", True),
        ("post_ln", "swiglu", True),
        ("deepnorm", "gelu", False),
        ("mix_ln", "swiglu", False),
    ],
)
def test_parameter_count_matches_closed_form(residual, ffn, tie):
    V, d, H, KV, N, h = 61, 32, 4, 2, 3, 40
    cfg = tiny(residual, ffn=ffn, ffn_hidden=h, tie_embeddings=tie)
    hd = d // H
    attn = d * H * hd + 2 * d * KV * hd + H * hd * d
    mlp = (3 if ffn == "swiglu" else 2) * d * h
    norms_per_sublayer = {"keel": None, "pre_ln": 1, "post_ln": 1, "deepnorm": 1, "mix_ln": 1}
    if residual == "keel":  # v2: first attention has LN_in only, every other sub-layer two norms
        n_norm_vectors = 1 + 2 * (2 * N - 1)
    else:
        n_norm_vectors = norms_per_sublayer[residual] * 2 * N
    final = 1 if residual in ("pre_ln", "mix_ln") else 0
    expected = V * d * (1 if tie else 2) + N * (attn + mlp) + (n_norm_vectors + final) * d
    assert count_parameters(build_model(cfg)) == expected


@pytest.mark.parametrize("residual", RESIDUALS)
def test_skipping_sublayers_equals_running_the_rest_in_order(residual):
    torch.manual_seed(0)
    model = build_model(tiny(residual)).double()
    idx = torch.randint(0, 61, (2, 10))
    for skip in ({0}, {3}, {1, 4}, {5}):
        x = model.tok_emb(idx)
        for i, sub in enumerate(model.sublayers):
            if i not in skip:
                x = sub(x)
        torch.testing.assert_close(model(idx, skip=skip), model.logits(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(model(idx, skip={2}), model(idx))


def test_skip_index_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        build_model(tiny())(torch.zeros(1, 4, dtype=torch.long), skip={6})


def test_keel_1024_sublayers_gives_finite_nonzero_gradient_at_every_sublayer():
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual="keel",
        vocab_size=64,
        d_model=32,
        n_heads=2,
        n_blocks=512,
        ffn_hidden=32,
        max_seq_len=16,
    )
    assert cfg.n_sublayers == 1024 and cfg.keel_alpha == 1024
    model = build_model(cfg)
    idx = torch.randint(0, 64, (1, 8))
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    for i, sub in enumerate(model.sublayers):
        g = torch.cat([p.grad.flatten() for p in sub.parameters()])
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"sub-layer {i}"


@pytest.mark.parametrize("residual", ["keel", "deepnorm"])
def test_bf16_autocast_keeps_the_branch_next_to_a_large_skip(residual):
    """With alpha = 1024, the change one branch makes survives bf16 autocast (within 5%)."""
    torch.manual_seed(0)
    cfg = tiny(residual, d_model=64, alpha=1024.0 if residual == "keel" else None, n_blocks=2)
    sub = build_model(cfg).sublayers[2]
    if residual == "deepnorm":
        sub.rule = type(sub.rule)(alpha=1024.0, norm_in=False, norm_out=True)
    x = torch.randn(2, 8, 64)

    def branch_effect():
        without = sub.norm_out(sub.rule.alpha * x)
        return sub(x) - without

    fp32 = branch_effect()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = branch_effect()
    rel = (bf16.float() - fp32).norm() / fp32.norm()
    assert rel < 0.05, f"branch effect off by {rel:.1%} under bf16"
