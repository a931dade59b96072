"""Fixtures for the eval tests: a tiny random model and the byte tokenizer (next_byte_lm, a
model whose greedy choice is known, lives in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_model(tiny_model_config):
    from keelctl.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_model_config).eval()


@pytest.fixture
def byte_tokenizer():
    from keelctl.data.tokenizers import ByteTokenizer

    return ByteTokenizer()
