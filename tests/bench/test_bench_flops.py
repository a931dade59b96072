"""The FLOPs convention against a hand count, and the peak table's lookup."""

from __future__ import annotations

import pytest
import torch

from keelctl.bench.flops import flops_params, flops_per_token, mfu, peak_flops
from keelctl.model import ModelConfig, build_model


def test_flops_per_token_matches_a_hand_count_for_a_tiny_pre_ln_model():
    # V=257, d=32, 4 heads of 8 (2 kv heads), swiglu FFN 96, 2 blocks, untied head.
    cfg = ModelConfig(
        residual="pre_ln",
        vocab_size=257,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_blocks=2,
        ffn_hidden=96,
        max_seq_len=64,
    )
    attn = 32 * 32 + 2 * 32 * 16 + 32 * 32  # q, k and v (2 kv heads x 8), o = 3072
    ffn = 3 * 32 * 96  # w1, w3, w2 = 9216
    norms = 2 * 32  # pre_ln: one LN_in per sub-layer
    head, final_norm = 257 * 32, 32
    n = 2 * (attn + ffn + norms) + head + final_norm  # 32960: the embedding table is left out
    assert n == 32960
    model = build_model(cfg)
    assert flops_params(model) == n
    # 6N + 12 * n_blocks * d_model * seq_len, seq_len 64
    assert flops_per_token(n, 2, 32, 64) == 6 * 32960 + 12 * 2 * 32 * 64 == 246912


def test_a_tied_head_is_counted_once_as_a_matrix_product():
    cfg = ModelConfig(vocab_size=257, d_model=32, n_heads=4, n_blocks=2, tie_embeddings=True)
    model = build_model(cfg)
    untied = build_model(cfg.model_copy(update={"tie_embeddings": False}))
    assert flops_params(model) == flops_params(untied)
    assert flops_params(model) == sum(p.numel() for p in model.parameters())


def test_flops_params_works_on_meta_models():
    with torch.device("meta"):
        model = build_model(ModelConfig(n_blocks=2))
    assert flops_params(model) > 0


@pytest.mark.parametrize(
    "name,precision,peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989e12),
        ("NVIDIA H100 PCIe", "bf16-mixed", 756e12),
        ("NVIDIA H200", "bf16-mixed", 989e12),
        ("NVIDIA A100-SXM4-80GB", "32", 19.5e12),
        ("Some Future GPU", "bf16-mixed", None),
    ],
)
def test_peak_table_lookup(name, precision, peak):
    assert peak_flops(name, precision) == peak


def test_mfu_is_achieved_over_peak_and_none_without_a_peak():
    assert mfu(1_000_000, 1000.0, 1e10) == pytest.approx(0.1)
    assert mfu(1_000_000, 1000.0, None) is None
