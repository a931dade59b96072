"""model.stream_dtype / model.norm_dtype bf16: a bf16 implementation's numerics simulated in fp32,
checked against Keel's sub-layer equation written out here with the rounding placed by hand:

    bf16 stream:  x' = r(LN_out(r(alpha * x + F(LN_in(x)))))       r = round to bf16
    bf16 gains:   x' = r(g) * normalise(alpha * x + F(LN_in(x)))   only LN_out's gain g

and the bad input: an unknown value, bf16 gains for a scheme with no LN_out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.model import ModelConfig, build_model

CFG = dict(residual="keel", vocab_size=61, d_model=32, n_heads=4, n_blocks=3)


def r(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def normalise(s: torch.Tensor, eps: float) -> torch.Tensor:
    return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)


def model_with_gains(**kw):
    """Keel with LN_out gains off 1 by a few thousandths (bf16 rounds such gains visibly)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG, **kw))
    with torch.no_grad():
        for sub in model.sublayers:
            for norm in (sub.norm_in, sub.norm_out):
                if isinstance(norm, torch.nn.RMSNorm):
                    norm.weight.add_(torch.randn_like(norm.weight) * 0.005)
    return model


def keel_update(sub, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """alpha * x + F(LN_in(x)), then normalise times `gain` (Keel's sub-layer, in fp32)."""
    h = normalise(x, sub.norm_in.eps) * sub.norm_in.weight
    s = sub.rule.alpha * x + sub.branch(h)
    return s, gain * normalise(s, sub.norm_out.eps)


@pytest.mark.parametrize("switch", ["stream_dtype", "norm_dtype"])
def test_each_switch_is_the_equation_with_its_rounding(switch):
    model = model_with_gains(**{switch: "bf16"})
    sub = model.sublayers[3]  # alpha = L = 6, both norms
    assert sub.rule.alpha == 6 and sub.rule.norm_in and sub.rule.norm_out
    x = r(torch.randn(2, 5, 32) * 3)  # a stream that a bf16 stream could hold
    with torch.no_grad():
        got = sub(x)
        if switch == "stream_dtype":
            s, _ = keel_update(sub, x, sub.norm_out.weight)
            want = r(sub.norm_out.weight * normalise(r(s), sub.norm_out.eps))
            assert torch.equal(got, r(got))  # the output is a bf16 number
        else:
            _, want = keel_update(sub, x, r(sub.norm_out.weight))
            assert not torch.equal(r(sub.norm_out.weight), sub.norm_out.weight)  # gains stay fp32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_stream_rounds_the_embedding_and_every_scheme_accepts_it():
    idx = torch.randint(0, 61, (1, 7))
    for residual in ("keel", "pre_ln", "post_ln"):
        model = build_model(ModelConfig(**CFG | {"residual": residual}, stream_dtype="bf16"))
        x = model.embed(idx)
        assert torch.equal(x, r(x)) and x.dtype == torch.float32
        fp32 = build_model(ModelConfig(**CFG | {"residual": residual}))
        fp32.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.equal(model(idx), fp32(idx))  # the rounding reaches the logits


def test_defaults_compute_what_they_did():
    """fp32 (the default): no rounding anywhere, the same function as before the switches."""
    model = model_with_gains()
    sub = model.sublayers[3]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        _, want = keel_update(sub, x, sub.norm_out.weight)
        torch.testing.assert_close(sub(x), want, rtol=1e-5, atol=1e-5)


TINY = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml")


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.stream_dtype=fp16"], "'model.stream_dtype': Input should be 'fp32' or 'bf16'"),
        (["model.norm_dtype=float32"], "'model.norm_dtype': Input should be 'fp32' or 'bf16'"),
        (["model.residual=pre_ln", "model.norm_dtype=bf16"], "residual pre_ln has none here"),
    ],
)
def test_bad_switches_are_one_line_and_exit_2(tmp_path, sets, message):
    args = ["train", TINY, "--run-dir", str(tmp_path / "run")]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
