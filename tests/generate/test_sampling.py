"""Temperature, top-k and top-p against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from keelctl.errors import KeelError
from keelctl.generate import Sampling, filter_logits, next_tokens

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
LOGITS = PROBS.log()


def kept(sampling) -> set[int]:
    return set(torch.isfinite(filter_logits(LOGITS, sampling))[0].nonzero().flatten().tolist())


def test_top_k_keeps_the_k_most_likely():
    assert kept(Sampling(temperature=1, top_k=1)) == {1}
    assert kept(Sampling(temperature=1, top_k=2)) == {1, 3}
    assert kept(Sampling(temperature=1, top_k=10)) == {0, 1, 2, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0)
    assert kept(Sampling(temperature=1, top_p=0.5)) == {1}
    assert kept(Sampling(temperature=1, top_p=0.7)) == {1, 3}
    assert kept(Sampling(temperature=1, top_p=0.81)) == {1, 3, 2}
    assert kept(Sampling(temperature=1, top_p=1.0)) == {0, 1, 2, 3}


def test_temperature_scales_the_logits():
    got = filter_logits(LOGITS, Sampling(temperature=0.5)).softmax(-1)
    expected = PROBS**2 / (PROBS**2).sum()
    torch.testing.assert_close(got, expected)


def test_draws_follow_the_filtered_distribution():
    gen = torch.Generator().manual_seed(0)
    logits = LOGITS.expand(20000, 4)
    draws = next_tokens(logits, Sampling(temperature=1, top_p=0.81), gen)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    expected = torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95
    assert torch.allclose(freq, expected, atol=0.015), freq
    assert next_tokens(LOGITS, Sampling()).tolist() == [1]  # temperature 0: argmax


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"temperature": -0.1}, "--temperature"),
        ({"temperature": math.nan}, "--temperature"),
        ({"top_k": 0}, "--top-k"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.01}, "--top-p"),
    ],
)
def test_bad_settings_are_refused(kwargs, flag):
    with pytest.raises(KeelError, match=flag):
        Sampling(**kwargs)
