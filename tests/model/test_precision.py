"""The precision policy (docs/scale.md): the residual stream is fp32 or wider under every
precision and strategy, including FSDP's bf16 param_dtype, which casts every parameter to bf16
for compute. Reproduced here by casting the parameters of a copy to bf16, as FSDP does."""

from __future__ import annotations

import copy
import statistics
import warnings

import pytest
import torch

from keelctl.model import RESIDUALS, ModelConfig, build_model


def bf16_params(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with bf16 parameters (buffers unchanged): what FSDP's param_dtype=bf16 uses."""
    cast = copy.deepcopy(model)
    for p in cast.parameters():
        p.data = p.data.to(torch.bfloat16)
    return cast


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.fixture(scope="module")
def keel_1024():
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual="keel", vocab_size=64, d_model=64, n_heads=4, n_blocks=512, max_seq_len=16
    )
    assert cfg.n_sublayers == 1024 and cfg.keel_alpha == 1024
    model = build_model(cfg)
    return model, bf16_params(model), torch.randint(0, 64, (2, 8))


def update_errors(fp32_model, bf16_model, idx, bf16_stream: bool) -> list[float]:
    """Per sub-layer 100..999: relative error of the update x' - x of the bf16-parameter
    sub-layer against the fp32 sub-layer on the same input x (taken from the bf16 run)."""
    errors = []
    with torch.no_grad():
        x = bf16_model.embed(idx)
        for i, (sub32, sub16) in enumerate(
            zip(fp32_model.sublayers, bf16_model.sublayers, strict=True)
        ):
            if bf16_stream:  # the stream stored in bf16 between sub-layers (the old FSDP path)
                x = x.to(torch.bfloat16)
                out = sub16(x).to(torch.bfloat16)
            else:
                out = sub16(x)
            if 100 <= i < 1000:
                want = sub32(x.float()) - x.float()
                errors.append(relative_error(out.float() - x.float(), want))
            x = out
    return errors


def test_keel_update_at_alpha_1024_survives_bf16_parameters(keel_1024):
    fp32_model, bf16_model, idx = keel_1024
    errors = update_errors(fp32_model, bf16_model, idx, bf16_stream=False)
    assert statistics.median(errors) < 0.05, f"median error {statistics.median(errors):.1%}"


def test_the_same_check_fails_when_the_stream_is_bf16(keel_1024):
    fp32_model, bf16_model, idx = keel_1024
    errors = update_errors(fp32_model, bf16_model, idx, bf16_stream=True)
    assert statistics.median(errors) > 0.05, f"median error {statistics.median(errors):.1%}"


@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("where", ["bf16 params", "bf16 autocast", "fp32"])
def test_every_scheme_keeps_the_stream_fp32(residual, where):
    torch.manual_seed(0)
    cfg = ModelConfig(residual=residual, vocab_size=61, d_model=32, n_heads=4, n_blocks=3)
    model = build_model(cfg)
    if where == "bf16 params":
        model = bf16_params(model)
    seen = []
    for sub in model.sublayers:
        sub.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=where == "bf16 autocast")
    with warnings.catch_warnings(), amp:
        warnings.simplefilter("error")  # e.g. a norm's input/gain dtype mismatch
        logits = model(torch.randint(0, 61, (2, 9)))
    assert seen == [(torch.float32, torch.float32)] * cfg.n_sublayers
    assert logits.dtype == (torch.float32 if where == "fp32" else torch.bfloat16)


def test_float64_stays_float64():
    model = build_model(ModelConfig(vocab_size=61, d_model=32, n_heads=4, n_blocks=2)).double()
    x = model.embed(torch.randint(0, 61, (1, 5)))
    assert x.dtype == torch.float64 and model.sublayers[3](x).dtype == torch.float64
