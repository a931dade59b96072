"""Gradient-flow theory: the skip-path gain per sub-layer against its closed forms."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from keelctl.model import ModelConfig
from keelctl.model.config import Residual
from keelctl.model.grad_theory import theory_gain, theory_label
from keelctl.model.residual import deepnorm_alpha


def test_theory_matches_closed_forms(tiny_model_config):
    L_ = 8
    k = torch.arange(L_, 0, -1).double().numpy()  # L - l for l = 0..L-1
    cfg = tiny_model_config.model_copy(update={"n_blocks": 4})
    post = theory_gain(cfg.model_copy(update={"residual": "post_ln"}))
    assert post == pytest.approx(2.0 ** (-k / 2))
    pre = theory_gain(cfg.model_copy(update={"residual": "pre_ln"}))
    assert pre == pytest.approx([1.0] * L_)
    a = deepnorm_alpha(4)
    deep = theory_gain(cfg.model_copy(update={"residual": "deepnorm"}))
    assert deep == pytest.approx((a / math.sqrt(a**2 + 1)) ** k)
    g = L_ / math.sqrt(L_**2 + 1)
    keel = theory_gain(cfg.model_copy(update={"residual": "keel", "keel_first_block": "none"}))
    assert keel == pytest.approx(g**k)
    # v2 first block: sub-layer 1 has alpha = 1 (gain 1/sqrt 2), sub-layer 0 is Pre-LN (gain 1).
    v2 = theory_gain(cfg.model_copy(update={"residual": "keel"}))
    assert v2[2:] == pytest.approx(g ** k[2:])
    assert v2[1] == pytest.approx(v2[2] / math.sqrt(2)) and v2[0] == pytest.approx(v2[1])


@pytest.mark.parametrize("scheme", typing.get_args(Residual))
def test_every_scheme_has_a_theory_curve_and_label(scheme):
    cfg = ModelConfig(residual=scheme, n_blocks=4, d_model=16, n_heads=2, vocab_size=257)
    assert theory_gain(cfg).shape == (8,)
    assert theory_label(cfg).startswith(f"theory {scheme} L=8: ")
