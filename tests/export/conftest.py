"""Run dirs with untrained (but non-trivial) weights for every scheme, made in milliseconds."""

from __future__ import annotations

import pytest
import torch


def save_run(root, name: str, tokenizer=None, **model_kw):
    """A run dir (model.json + model.safetensors, no config.yaml) for ModelConfig(**model_kw),
    its weights scaled up so that every sub-layer matters."""
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.model import ModelConfig, build_model
    from keelctl.runs import Run

    torch.manual_seed(0)
    kw = dict(d_model=32, n_heads=4, n_kv_heads=2, n_blocks=3, max_seq_len=48) | model_kw
    model = build_model(ModelConfig(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4 if p.dim() == 2 else 1 + torch.rand_like(p))
    run = root / name
    Run(run).save_model(model, tokenizer or ByteTokenizer())
    return run


@pytest.fixture
def make_run(tmp_path):
    return lambda name, **kw: save_run(tmp_path, name, **kw)
