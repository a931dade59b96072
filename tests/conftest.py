"""Shared fixtures: tiny models, tiny corpora, tiny run dirs, built in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Vanishing gradients fill tensors with subnormals on CPU, which slowed runs 8x here.
torch.set_flush_denormal(True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    spin-waiting made them 20-60x slower; restored in case a test (bench) changes it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def stop_after():
    """stop_after(steps) -> a Lightning callback that ends a run cleanly after `steps`
    optimizer steps, as a preempted job would."""
    import lightning as L

    class StopAfter(L.Callback):
        def __init__(self, steps: int):
            self.steps = steps

        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= self.steps:
                trainer.should_stop = True

    return StopAfter


class NextByteLM(torch.nn.Module):
    """Predicts byte b + 1 after byte b with certainty, 'a' after end-of-text (256) and
    end-of-text after '~'. Position-free, so it also runs with a (layer-less) KV cache."""

    def __init__(self, max_seq_len: int = 16):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(
            max_seq_len=max_seq_len, residual="next-byte", n_blocks=0, kv_heads=1, head_dim=2
        )
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, idx: torch.Tensor, skip=None, cache=None) -> torch.Tensor:
        if cache is not None:
            cache.extend(idx.shape[1])
        nxt = torch.where(idx == ord("~"), 256, torch.where(idx == 256, ord("a"), idx + 1))
        return self.scale * torch.nn.functional.one_hot(nxt, 257).float()


@pytest.fixture
def next_byte_lm():
    return NextByteLM()


# The tiny model of tiny_model_config and model_run_dir: byte vocabulary, 2 blocks of width 32.
TINY_MODEL = dict(vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2, max_seq_len=64)


@pytest.fixture
def tiny_model_config():
    from keelctl.model import ModelConfig

    return ModelConfig(**TINY_MODEL)


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
    from keelctl.config import RecipeConfig
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.model import build_model
    from keelctl.runs import Run

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("runs") / "untrained-keel"
    recipe = RecipeConfig(
        name="untrained-keel",
        model=TINY_MODEL,
        data=dict(
            corpus=str(tiny_corpus),
            seq_len=64,
            batch_size=4,
            val_fraction=0.1,
            val_tokens=2048,
            cache_dir=str(run_dir.parent / "cache"),
        ),
    )
    run = Run(run_dir)
    run.save_model(build_model(recipe.model), ByteTokenizer())
    run.write_recipe(recipe)
    return run_dir


TINY_KEEL_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-keel.yaml"


@pytest.fixture(scope="session")
def tiny_train_sets(tiny_corpus):
    """make(cache_dir, max_steps) -> --set overrides shrinking recipes/tiny-keel.yaml to
    d_model 32, 2 blocks, seq_len 32, batch 4 on tiny_corpus: about 50 ms a step."""

    def make(cache_dir, max_steps: int = 30) -> list[str]:
        shrink = (
            "model.d_model=32 model.n_blocks=2 model.ffn_hidden=96 model.max_seq_len=64 "
            "data.seq_len=32 data.batch_size=4 data.val_fraction=0.1 data.val_tokens=1024 "
            "data.max_bytes=null optim.warmup_steps=5 trainer.val_every=10 "
            "trainer.grad_flow_every=10 trainer.loggers=[csv]"  # no per-record figure to draw
        ).split()
        paths = [f"data.corpus={tiny_corpus}", f"data.cache_dir={cache_dir}"]
        return [*shrink, *paths, f"trainer.max_steps={max_steps}"]

    return make


@pytest.fixture(scope="session")
def trained_run_dir(tmp_path_factory, tiny_train_sets):
    """A finished tiny Keel run (40 steps, about 2 s of training): config.yaml, metrics.csv,
    grads.csv, checkpoints/, model.safetensors, model.json, summary.json; for command tests
    that need a trained model. Treat it as read-only: it is shared by the whole session."""
    from keelctl.config import load_recipe
    from keelctl.train import train

    root = tmp_path_factory.mktemp("trained")
    overrides = ["name=tiny-keel-test", *tiny_train_sets(root / "cache", max_steps=40)]
    run_dir = root / "tiny-keel"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: 20-40x faster than two threads on shared cores
    try:
        train(load_recipe(TINY_KEEL_RECIPE, overrides), run_dir, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir
