"""The KV cache and the decode loop against recomputing the whole sequence with model(idx)."""

from __future__ import annotations

import pytest
import torch

from keelctl.generate import GREEDY, KVCache, Sampling, generate
from keelctl.model import RESIDUALS, ModelConfig, build_model

EOT = 256


def tiny(residual: str, n_blocks: int = 3, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual=residual,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_blocks=n_blocks,
        max_seq_len=64,
        **kw,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():  # larger weights than at init: sharper, more varied predictions
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model


def greedy_by_recomputing(model, prompt, n, context):
    """The reference: every step runs the whole window through model(idx); the window slides
    as docs/generate.md says (at the context, keep the newest half)."""
    window, out = list(prompt[-context:]), []
    for _ in range(n):
        with torch.no_grad():
            token = int(model(torch.tensor([window]))[0, -1].argmax())
        if token == EOT:
            break
        out.append(token)
        window = (window[-(context // 2) :] if len(window) == context else window) + [token]
    return out


SCHEMES = [*RESIDUALS, "keel_v1", "keel_final_norm"]


def scheme_model(name: str):
    if name == "keel_v1":
        return tiny("keel", keel_first_block="v1")
    if name == "keel_final_norm":
        return tiny("keel", final_norm=True)
    return tiny(name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cached_logits_equal_the_full_forward(scheme):
    model = scheme_model(scheme)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 20, dtype=torch.float32, device="cpu")
        steps = [model(ids[:, :7], cache=cache)]  # prefill, then one token at a time
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_greedy_with_cache_equals_recomputing(scheme):
    model = scheme_model(scheme)
    prompt = [EOT, *b"def f(x):"]
    got = generate(model, [prompt], max_new_tokens=40, context=64, eot_id=EOT)[0]
    assert got == greedy_by_recomputing(model, prompt, 40, 64)
    assert len(got) >= 20  # the comparison covered many steps


def test_deep_greedy_with_cache_equals_without_cache():
    model = tiny("keel", n_blocks=32)  # 64 sub-layers, the depth of docs/generate.md's timings
    prompt = [EOT, *b"def f(x):"]
    runs = [
        generate(model, [prompt], max_new_tokens=32, context=64, eot_id=EOT, use_cache=use_cache)
        for use_cache in (True, False)
    ]
    assert runs[0] == runs[1] == [greedy_by_recomputing(model, prompt, 32, 64)]
    assert len(set(runs[0][0])) >= 3  # not one token repeated: the comparison can fail


def test_rope_tables_shared_by_all_layers_equal_each_layers_own():
    """The model computes RoPE's cos/sin once per forward for every layer; each attention
    computing its own (a sub-layer run alone) gives bit-identical logits, cached or not."""
    model = tiny("keel", n_blocks=32)
    ids, pad = torch.randint(0, 256, (2, 12)), torch.tensor([3, 0])

    def layer_by_layer(idx, kv=None):
        x = model.embed(idx)
        for b, block in enumerate(model.blocks):
            x = block.ffn(block.attn(x) if kv is None else block.attn(x, kv=kv[b]))
        return model.logits(x)

    with torch.no_grad():
        assert torch.equal(model(ids), layer_by_layer(ids))
        shared, own = (
            KVCache(model.config, 2, 12, dtype=torch.float32, device="cpu", pad=pad)
            for _ in range(2)
        )
        for chunk in (ids[:, :9], ids[:, 9:10], ids[:, 10:11]):  # prefill, then one token each
            assert torch.equal(
                model(chunk, cache=shared), layer_by_layer(chunk, own.extend(chunk.shape[1]))
            )


def test_greedy_past_the_context_slides_like_recomputing():
    model = tiny("keel")
    prompt = list(b"a prompt longer than the context")  # 32 tokens, context 12
    for use_cache in (True, False):
        got = generate(
            model, [prompt], max_new_tokens=30, context=12, eot_id=EOT, use_cache=use_cache
        )[0]
        assert got == greedy_by_recomputing(model, prompt, 30, 12)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny("keel")
    prompts = [list(b"x = "), list(b"import numpy as np\n"), [EOT], list(b"for i in")]
    batched = generate(model, prompts, max_new_tokens=15, context=64, eot_id=EOT)
    alone = [generate(model, [p], max_new_tokens=15, context=64, eot_id=EOT)[0] for p in prompts]
    assert batched == alone
    pad = torch.tensor([3, 0])  # row 0 is left-padded: its logits equal the unpadded forward
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        cache = KVCache(model.config, 2, 12, dtype=torch.float32, device="cpu", pad=pad)
        first = model(ids, cache=cache)[0, 3:]
        next_logits = model(ids[:, :1], cache=cache)[0, -1]
        alone = model(torch.cat([ids[0, 3:], ids[0, :1]]).unsqueeze(0))[0]
    torch.testing.assert_close(first, alone[:-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(next_logits, alone[-1], atol=1e-5, rtol=1e-5)


def test_cache_is_preallocated_in_the_branch_dtype():
    cfg = tiny("keel").config
    cache = KVCache(cfg, 3, 40, dtype=torch.bfloat16, device="cpu")
    assert len(cache.keys) == len(cache.values) == cfg.n_blocks
    assert cache.keys[0].shape == (3, cfg.kv_heads, 40, cfg.head_dim)
    assert cache.keys[0].dtype == torch.bfloat16
    model = tiny("keel")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        from keelctl.generate.decode import branch_dtype

        assert branch_dtype(model) == torch.bfloat16
        out = generate(model, [[EOT, 1, 2]], max_new_tokens=3, context=16, eot_id=EOT)
    assert len(out[0]) <= 3
    assert branch_dtype(model) == torch.float32
    with pytest.raises(ValueError, match="KV cache full"):
        cache.extend(41)


def test_stops_at_end_of_text_and_at_stop_condition(next_byte_lm):
    # after "x" the model says y, z, {, |, }, ~ then end-of-text
    assert generate(next_byte_lm, [list(b"x")], max_new_tokens=20, context=16, eot_id=EOT) == [
        list(b"yz{|}~")
    ]
    got = generate(
        next_byte_lm,
        [list(b"a"), list(b"xyz")],
        max_new_tokens=20,
        context=16,
        eot_id=EOT,
        stop=lambda ids: ids[-1] == ord("e"),
    )
    assert got == [list(b"bcde"), list(b"{|}~")]


def test_sampling_with_a_seed_is_reproducible_and_top_k_1_is_greedy():
    model = tiny("pre_ln")
    prompt = [EOT, *b"class "]

    def run(sampling, seed):
        gen = torch.Generator().manual_seed(seed)
        return generate(
            model,
            [prompt] * 3,
            max_new_tokens=20,
            context=64,
            eot_id=EOT,
            sampling=sampling,
            generator=gen,
        )

    warm = Sampling(temperature=1.5)
    assert run(warm, 1) == run(warm, 1)
    assert run(warm, 1) != run(warm, 2)
    greedy = run(GREEDY, 0)
    assert run(Sampling(temperature=1.5, top_k=1), 3) == greedy
    assert run(Sampling(temperature=1.5, top_p=1e-6), 4) == greedy
