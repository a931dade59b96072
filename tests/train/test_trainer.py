"""build_trainer and expected_warnings_hidden: `keelctl train` and `keelctl bench` build their
Lightning Trainer from a recipe the same way, under the same warning filters."""

from __future__ import annotations

import logging
import warnings

import lightning
import pytest
import torch

from keelctl.bench.lightning_path import time_lightning
from keelctl.train import train
from keelctl.train.trainer import EXPECTED_WARNINGS, expected_warnings_hidden


@pytest.fixture
def built_trainers(monkeypatch):
    """Every Trainer constructed while the test runs, with the warning filters active then."""
    built = []

    class Recorded(lightning.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self, list(warnings.filters)))

    monkeypatch.setattr(lightning, "Trainer", Recorded)
    return built


def test_train_and_bench_build_the_same_trainer_from_one_recipe(
    tiny_recipe, tmp_path, built_trainers
):
    recipe = tiny_recipe(
        "trainer.precision=bf16-mixed",
        "trainer.accumulate_grad_batches=2",
        "optim.grad_clip=0.5",
        "trainer.accelerator=cpu",
        max_steps=2,
    )
    train(recipe, tmp_path / "run", progress_bar=False)
    x = torch.randint(0, 257, (recipe.data.batch_size, recipe.data.seq_len))
    time_lightning(recipe, [(x, x)] * 4, torch.device("cpu"))

    (trained, train_filters), (benched, bench_filters) = built_trainers
    for t in (trained, benched):
        assert t.precision == "bf16-mixed"
        assert (t.max_steps, t.accumulate_grad_batches, t.gradient_clip_val) == (2, 2, 0.5)
        assert type(t.accelerator).__name__ == "CPUAccelerator"
    assert type(trained.strategy) is type(benched.strategy)
    assert train_filters == bench_filters
    # train checkpoints and validates into its run dir; bench only fits
    assert trained.checkpoint_callback is not None and benched.checkpoint_callback is None
    assert benched.limit_val_batches == 0 and trained.limit_val_batches == 1.0


def test_expected_warnings_are_hidden_and_others_shown():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with expected_warnings_hidden():
            for message in EXPECTED_WARNINGS:
                warnings.warn(f"Lightning says: {message} (details)", UserWarning, stacklevel=1)
            warnings.warn("The dataloader is exhausted", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["The dataloader is exhausted"]


def test_hide_notes_quiets_lightning_info_inside_the_block_only():
    logger = logging.getLogger("lightning.pytorch")
    before = logger.level
    with expected_warnings_hidden(hide_notes=True):
        assert not logger.isEnabledFor(logging.INFO)
    assert logger.level == before
    with expected_warnings_hidden():
        assert logger.level == before
