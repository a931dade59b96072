"""Shared fixtures: tiny models, tiny corpora, tiny run dirs, built in milliseconds."""

from __future__ import annotations

import os

import pytest
import torch

# Vanishing gradients fill tensors with subnormals on CPU, which slowed runs 8x here.
torch.set_flush_denormal(True)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_model_config():
    from keelctl.model import ModelConfig

    return ModelConfig(
        vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2, max_seq_len=64
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A directory of small, varied text files (enough for a train/val split by file)."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        lines = [f"def function_{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(30)]
        (root / f"doc_{i:02d}.py").write_text("".join(lines))
    return root


@pytest.fixture(scope="session")
def model_run_dir(tmp_path_factory, tiny_corpus):
    """A run dir holding an untrained tiny Keel model (model.json, model.safetensors,
    config.yaml pointing at tiny_corpus): for commands that only need to load a model."""
    from keelctl.config import RecipeConfig, dump_recipe
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.model import build_model
    from keelctl.runs import CONFIG_YAML, atomic_write_text, save_model

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("runs") / "untrained-keel"
    recipe = RecipeConfig(
        name="untrained-keel",
        model=dict(vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2, max_seq_len=64),
        data=dict(corpus=str(tiny_corpus), seq_len=64, batch_size=4, val_fraction=0.1,
                  val_tokens=2048, cache_dir=str(run_dir.parent / "cache")),
    )
    save_model(run_dir, build_model(recipe.model), ByteTokenizer())
    atomic_write_text(run_dir / CONFIG_YAML, dump_recipe(recipe))
    return run_dir
