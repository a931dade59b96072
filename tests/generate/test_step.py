"""The lean one-token step (keelctl.generate.step) against the model's own cached forward."""

from __future__ import annotations

import pytest
import torch

from keelctl.generate import KVCache, generate
from keelctl.generate.step import lean_step
from keelctl.model import RESIDUALS, ModelConfig, build_model
from keelctl.model.transformer import Transformer

EOT = 256
VARIANTS = {
    **{name: {"residual": name} for name in RESIDUALS},
    "keel_v1": {"residual": "keel", "keel_first_block": "v1"},
    "keel_naive": {"residual": "keel", "keel_inner_norm": False},
    "keel_final_norm": {"residual": "keel", "final_norm": True},
    "keel_gelu_tied": {"residual": "keel", "ffn": "gelu", "tie_embeddings": True},
    "keel_bf16_numerics": {"residual": "keel", "stream_dtype": "bf16", "norm_dtype": "bf16"},
    "pre_ln_no_gqa": {"residual": "pre_ln", "n_kv_heads": 4},
}


def model_of(n_blocks: int = 8, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64, **kw}
    model = build_model(ModelConfig(n_blocks=n_blocks, **cfg)).eval()
    with torch.no_grad():  # larger weights than at init: sharper, more varied predictions
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
            else:
                p.uniform_(0.5, 1.5)  # norm gains away from 1
    return model


def assert_lean_step_is_the_model(model: Transformer, dtype: torch.dtype) -> None:
    """A left-padded batch of 2 (row 0 has 3 pad slots): prefill, then 12 one-token steps
    fed the model's greedy tokens; every step's logits and the filled cache are identical."""
    step = lean_step(model)
    assert step is not None
    ids, pad = torch.randint(0, 256, (2, 9)), torch.tensor([3, 0])
    caches = [KVCache(model.config, 2, 24, dtype=dtype, device="cpu", pad=pad) for _ in "ab"]
    with torch.inference_mode():
        for cache in caches:
            model(ids, cache=cache)
        token = ids[:, -1:]
        for _ in range(12):
            want = model(token, cache=caches[0])
            assert torch.equal(step(token, caches[1]), want)
            token = want[:, -1].argmax(-1, keepdim=True)
    n = caches[0].length
    filled = [cache.keys + cache.values for cache in caches]
    for a, b in zip(*filled, strict=True):
        assert torch.equal(a[:, :, :n], b[:, :, :n])


@pytest.mark.parametrize("variant", VARIANTS)
def test_lean_step_logits_are_the_models_bit_for_bit(variant):
    assert_lean_step_is_the_model(model_of(**VARIANTS[variant]), torch.float32)


def test_lean_step_in_fp64():
    assert_lean_step_is_the_model(model_of(residual="keel").to(torch.float64), torch.float64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_with_the_lean_step_equals_greedy_without_cache(variant):
    model = model_of(**VARIANTS[variant])
    prompts = [[EOT, *b"def f(x):"], [EOT, *b"import"]]
    runs = [
        generate(model, prompts, max_new_tokens=24, context=64, eot_id=EOT, use_cache=use_cache)
        for use_cache in (True, False)
    ]
    assert runs[0] == runs[1]
    assert sum(len(row) for row in runs[0]) >= 24  # the comparison covered many steps


def test_decode_runs_the_model_once_then_the_lean_step(monkeypatch):
    model = model_of(n_blocks=2)
    calls = []
    forward = Transformer.forward
    monkeypatch.setattr(
        Transformer,
        "forward",
        lambda self, idx, **kw: calls.append(idx.shape) or forward(self, idx, **kw),
    )
    prompt = [EOT, *b"abc"]
    new = generate(model, [prompt], max_new_tokens=10, context=64, eot_id=EOT + 1)[0]
    assert len(new) == 10
    assert calls == [(1, len(prompt))]  # the prefill; the 9 one-token steps ran lean


def test_no_lean_step_where_it_would_not_compute_what_the_model_does():
    model = model_of(n_blocks=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lean_step(model) is None  # bf16 branches, fp32 stream: the model's path
    assert lean_step(model_of(n_blocks=2).to(torch.bfloat16)) is None
    assert lean_step(torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("residual", ["keel", "pre_ln"])
def test_lean_step_is_the_model_at_512_sub_layers(residual):
    """Deep enough that an error compounding over sub-layers would show: 256 blocks."""
    assert_lean_step_is_the_model(model_of(n_blocks=256, residual=residual), torch.float32)
