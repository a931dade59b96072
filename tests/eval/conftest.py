"""Fixtures for the eval tests: a tiny random model and a model whose greedy choice is known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn


@pytest.fixture
def tiny_model(tiny_model_config):
    from keelctl.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_model_config).eval()


@pytest.fixture
def byte_tokenizer():
    from keelctl.data.tokenizers import ByteTokenizer

    return ByteTokenizer()


class NextByteLM(nn.Module):
    """Predicts byte b + 1 after byte b with certainty, 'a' after end-of-text (256) and
    end-of-text after '~'."""

    def __init__(self, max_seq_len: int = 16):
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=max_seq_len, residual="next-byte")
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, idx: torch.Tensor, skip=None) -> torch.Tensor:
        nxt = torch.where(idx == ord("~"), 256, torch.where(idx == 256, ord("a"), idx + 1))
        return self.scale * nn.functional.one_hot(nxt, 257).float()


@pytest.fixture
def next_byte_lm():
    return NextByteLM()
