"""Peri-LN and LayerNorm Scaling against their authors' equations, written out here in float64
independently of keelctl.model.residual:

    Peri-LN (arXiv 2502.02732; OLMo-core PeriNormTransformerBlock, Gemma 2):
        h = x + post_attention_norm(attention(attention_norm(x)))
        x' = h + post_feed_forward_norm(feed_forward(feed_forward_norm(h)))
    LayerNorm Scaling (arXiv 2502.05795; lmsdss/LayerNorm-Scaling, norm type LNS):
        h = x + attention(input_layernorm(x) / sqrt(layer_index + 1))
        x' = h + mlp(post_attention_layernorm(h) / sqrt(layer_index + 1))

layer_index is the 0-based block. Both end in a final norm before the head (Llama's model.norm).
With embedding_norm (OLMo-core's embedding_norm) the stream starts as x_0 = embedding_norm(E[t]).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.model import ModelConfig, build_model

EPS = 1e-5
TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"


def rms_norm(v: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * gain


def make(residual: str, n_blocks: int = 6, random_gains: bool = True, **options):
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual=residual, d_model=16, n_heads=2, n_blocks=n_blocks, vocab_size=50, max_seq_len=32,
        **options,
    )
    model = build_model(cfg).double()
    if random_gains:  # so a missing, swapped or misplaced norm shows
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5)
    return model


def peri_ln_block(block, x):
    a, f = block.attn, block.ffn
    h = x + rms_norm(a.branch(rms_norm(x, a.norm_in.weight)), a.norm_branch.weight)
    return h + rms_norm(f.branch(rms_norm(h, f.norm_in.weight)), f.norm_branch.weight)


def lns_block(block, x, layer_index):
    a, f = block.attn, block.ffn
    scale = 1 / (layer_index + 1) ** 0.5
    h = x + a.branch(scale * rms_norm(x, a.norm_in.weight))
    return h + f.branch(scale * rms_norm(h, f.norm_in.weight))


def reference_logits(model, idx):
    """The whole model from the equations above: embedding, blocks, final norm, head."""
    x = model.tok_emb.weight[idx]
    if model.config.embedding_norm:
        x = rms_norm(x, model.norm_emb.weight)
    for b, block in enumerate(model.blocks):
        if model.config.residual == "peri_ln":
            x = peri_ln_block(block, x)
        else:
            x = lns_block(block, x, b)
    return rms_norm(x, model.norm_f.weight) @ model.head.weight.T


@pytest.mark.parametrize("residual", ["peri_ln", "lns"])
def test_every_block_matches_the_authors_equation(residual):
    model = make(residual)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for b, block in enumerate(model.blocks):
        want = peri_ln_block(block, x) if residual == "peri_ln" else lns_block(block, x, b)
        torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-10, msg=f"block {b}")


@pytest.mark.parametrize("residual", ["peri_ln", "lns"])
def test_logits_of_a_deep_model_match_the_equations_end_to_end(residual):
    model = make(residual, n_blocks=32)  # 64 sub-layers
    idx = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(model(idx), reference_logits(model, idx), rtol=1e-9, atol=1e-9)


def test_embedding_norm_starts_the_stream_normalised_end_to_end():
    model = make("peri_ln", n_blocks=32, embedding_norm=True)  # 64 sub-layers, random gains
    idx = torch.randint(0, 50, (2, 12))
    want = reference_logits(model, idx)
    torch.testing.assert_close(model(idx), want, rtol=1e-9, atol=1e-9)
    model.norm_emb = None  # the same weights without LN_E compute something else
    assert (model(idx) - want).abs().max() > 1e-3


def test_lns_scales_differ_by_block_and_are_shared_by_the_blocks_two_sub_layers():
    model = make("lns", n_blocks=4)
    scales = [sub.rule.in_scale for sub in model.sublayers]
    assert scales == pytest.approx([1, 1, 2**-0.5, 2**-0.5, 3**-0.5, 3**-0.5, 0.5, 0.5])


@pytest.mark.parametrize("residual", ["peri_ln", "lns"])
def test_init_as_the_authors_code_unit_gains_normal_weights_final_norm(residual):
    model = make(residual, n_blocks=4, random_gains=False)
    gains = [p for p in model.parameters() if p.dim() == 1]
    norms_per_sublayer = 2 if residual == "peri_ln" else 1  # LN_in (and Peri-LN's LN_F)
    assert len(gains) == 8 * norms_per_sublayer + 1  # 8 sub-layers, + the final norm
    assert all(torch.equal(g, torch.ones_like(g)) for g in gains)
    assert model.norm_f is not None
    assert all(sub.norm_out is None for sub in model.sublayers)  # the skip is the identity
    w = model.blocks[2].attn.branch.wo.weight  # no DeepNorm-like shrink of branch weights
    assert abs(w.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("residual", ["peri_ln", "lns"])
@pytest.mark.parametrize("key", ["model.alpha=3", "model.keel_first_block=v1"])
def test_keel_only_keys_are_refused_with_one_line_exit_2(residual, key, tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", str(TINY), "--set", f"model.residual={residual}", "--set", key,
         "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"do not apply to residual {residual}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_scheme_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(
        app, ["train", str(TINY), "--set", "model.residual=sandwich", "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "'peri_ln' or 'lns' (got 'sandwich')" in result.output
    assert "Traceback" not in result.output
