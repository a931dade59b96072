"""transformers models as model sources: decoder layers found from structure, removing a
layer equals the model with that layer replaced by the identity, the cached suffix equals the
whole model, and the stream measures match their formulas."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import FAMILIES, transformers
from torch import nn

from keelctl.analysis.ablation import plan_removals
from keelctl.analysis.removal import StreamMeasures, hf_removal_losses
from keelctl.sources import open_source


class Identity(nn.Module):
    """A decoder layer that returns the stream it is given: x' = x."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def fresh(folder: str):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    return model.eval()


def stack_of(model) -> nn.ModuleList:
    return (
        model.model.layers
        if hasattr(model, "model")
        else (model.transformer.h if hasattr(model, "transformer") else model.gpt_neox.layers)
    )


def tokens(n: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(2, 300, (n, t), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_a_block_equals_the_model_with_that_layer_replaced_by_identity(family, hf_folder):
    source = open_source(hf_folder(family))
    assert (source.family, source.n_sublayers, source.kind) == (
        FAMILIES[family]().model_type,
        6,
        "transformers",
    )
    model = source.load(torch.device("cpu")).double()
    idx = tokens()
    with torch.no_grad():
        full = model(idx)
        for b in range(3):
            reference = fresh(hf_folder(family))
            stack_of(reference)[b] = Identity(stack_of(reference)[b])
            want = reference(input_ids=idx, use_cache=False).logits
            got = model(idx, skip={2 * b, 2 * b + 1})
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            assert (got - full).abs().max() > 1e-3  # the layer mattered
        torch.testing.assert_close(full, fresh(hf_folder(family))(input_ids=idx).logits)


class PreLNWithoutAttention(nn.Module):
    """The Llama/GPT-2 decoder layer with its attention removed: x' = x + MLP(norm2(x))."""

    def __init__(self, layer: nn.Module, norm: str):
        super().__init__()
        self.mlp, self.norm = layer.mlp, getattr(layer, norm)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states + self.mlp(self.norm(hidden_states))


class PreLNWithoutMLP(nn.Module):
    """The Llama decoder layer with its MLP removed: x' = x + Attn(norm1(x)), the attention
    called with what the model hands the layer (masks, rotary tables)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.attn, self.norm = layer.self_attn, layer.input_layernorm

    def forward(self, hidden_states, **kwargs):
        return hidden_states + self.attn(self.norm(hidden_states), **kwargs)[0]


@pytest.mark.parametrize("family,norm2", [("llama", "post_attention_layernorm"), ("gpt2", "ln_2")])
def test_removing_attention_or_mlp_follows_the_layer_equation(family, norm2, hf_folder):
    model = open_source(hf_folder(family)).load(torch.device("cpu")).double()
    idx = tokens()
    with torch.no_grad():
        for b in range(3):
            no_attn = fresh(hf_folder(family))
            layer = stack_of(no_attn)[b]
            stack_of(no_attn)[b] = PreLNWithoutAttention(layer, norm2)
            want = no_attn(input_ids=idx, use_cache=False).logits
            torch.testing.assert_close(model(idx, skip={2 * b}), want, rtol=1e-10, atol=1e-10)
            if family == "llama":
                no_mlp = fresh(hf_folder(family))
                stack_of(no_mlp)[b] = PreLNWithoutMLP(stack_of(no_mlp)[b])
                want = no_mlp(input_ids=idx, use_cache=False).logits
                got = model(idx, skip={2 * b + 1})
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gpt_neox", "olmo2"])
def test_cached_suffix_equals_naive(family, hf_folder):
    model = open_source(hf_folder(family)).load(torch.device("cpu")).double()
    model.check_bypass()
    n = 3  # blocks; passes per batch in sub-layers, as docs/ablate-layers.md counts them
    expected = {
        "sublayer": (2 * n + 2 * n * (n + 1), 2 * n + 4 * n * n),
        "block": (n * (n + 1), 2 * n * n),
    }
    for unit, range_size in [("sublayer", 1), ("block", 1), ("sublayer", 3)]:
        removals = plan_removals(6, unit, range_size=range_size)
        cached = hf_removal_losses(model, batches(), removals)
        naive = hf_removal_losses(model, batches(), removals, method="naive")
        assert cached[0] == pytest.approx(naive[0], rel=1e-12)
        assert cached[1] == pytest.approx(naive[1], rel=1e-12)
        assert cached[2] < naive[2]
        if range_size == 1:
            assert (cached[2], naive[2]) == tuple(2 * p for p in expected[unit])  # 2 batches


def batches():
    g = torch.Generator().manual_seed(4)
    return [(t[:, :-1], t[:, 1:]) for t in torch.randint(2, 300, (2, 2, 11), generator=g)]


def test_block_influence_and_relative_update_follow_their_formulas(hf_folder):
    model = open_source(hf_folder("mistral")).load(torch.device("cpu")).double()
    measures = StreamMeasures(3, per=2)
    hf_removal_losses(model, batches(), [], measures=measures)
    reference = fresh(hf_folder("mistral"))
    pairs = {b: [] for b in range(3)}
    for b, layer in enumerate(stack_of(reference)):
        layer.register_forward_hook(lambda m, a, out, b=b: pairs[b].append((a[0], out)))
    with torch.no_grad():
        for x, _ in batches():
            reference(input_ids=x, use_cache=False)
    bi, rel = measures.means()
    for b in range(3):
        x_in = torch.cat([p[0].flatten(0, 1) for p in pairs[b]])
        x_out = torch.cat([p[1].flatten(0, 1) for p in pairs[b]])
        cos = (x_in * x_out).sum(-1) / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
        assert bi[b] == pytest.approx((1 - cos).mean().item(), rel=1e-9)
        step = (x_out - x_in).norm(dim=-1) / x_in.norm(dim=-1)
        assert rel[b] == pytest.approx(step.mean().item(), rel=1e-9)


def test_a_forward_set_on_the_layer_instance_survives_removals(hf_folder):
    """accelerate's device hooks replace a layer's forward on the instance (device_map=auto);
    removing a layer must use it when the layer runs and put it back afterwards."""
    model = open_source(hf_folder("llama")).load(torch.device("cpu"))
    block, calls = model.blocks[1], []
    original = block.forward

    def hooked(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    block.forward = hooked
    idx = tokens()
    with torch.no_grad():
        full, states = model.capture(idx)
        assert len(calls) == 1
        model(idx, skip={2, 3})  # block 1 removed: not called
        torch.testing.assert_close(model.run(idx, {0, 1}, 1, states[0]), model(idx, skip={0, 1}))
        assert len(calls) == 3 and block.__dict__["forward"] is hooked
        torch.testing.assert_close(model(idx), full)
