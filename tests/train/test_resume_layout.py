"""A resume may split the same global batch differently (fewer devices, more accumulation);
anything else that moves the data position or the model is refused."""

from __future__ import annotations

import pytest
from child_runs import TINY_KEEL, max_abs_diff, metrics

from keelctl.config import load_recipe
from keelctl.data import prepare_tokens
from keelctl.errors import KeelError
from keelctl.train import train
from keelctl.train.datamodule import TokenDataModule


def test_resume_with_the_global_batch_split_into_micro_batches(stop_after, cpu_tiny_sets, tmp_path):
    """4 sequences a step as one batch, then (after step 20) as 2 micro-batches of 2: the same
    samples in the same steps, so the losses agree up to summation order (measured < 1e-6)."""
    first = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=40))
    train(first, tmp_path / "straight", progress_bar=False)
    train(first, tmp_path / "run", progress_bar=False, callbacks=[stop_after(20)])
    split = cpu_tiny_sets("data.batch_size=2", "trainer.accumulate_grad_batches=2", max_steps=40)
    train(load_recipe(TINY_KEEL, split), tmp_path / "run", resume=True, progress_bar=False)
    # train_loss is the last micro-batch's after the split, so compare the full-batch numbers.
    columns = ["val_loss", "lr", "tokens"]
    assert (
        max_abs_diff(metrics(tmp_path / "run", columns), metrics(tmp_path / "straight", columns))
        < 1e-5
    )


@pytest.mark.parametrize(
    "change,refused",
    [
        (["data.batch_size=2"], "data.batch_size"),  # a smaller global batch
        (["trainer.strategy=ddp", "trainer.devices=2"], "trainer.devices"),  # 8 sequences a step
    ],
)
def test_resume_refuses_a_different_global_batch(
    stop_after, change, refused, cpu_tiny_sets, tmp_path
):
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=20))
    train(recipe, tmp_path / "run", progress_bar=False, callbacks=[stop_after(10)])
    with pytest.raises(KeelError, match=f"differs from the checkpoint's in .*{refused}"):
        train(
            load_recipe(TINY_KEEL, cpu_tiny_sets(*change, max_steps=20)),
            tmp_path / "run",
            resume=True,
        )


def test_non_zero_ranks_read_the_corpus_after_lightnings_prepare_data(cpu_tiny_sets, tmp_path):
    """Without data (a torchrun rank other than 0), prepare_data tokenizes and setup reads."""
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets())
    calls = []

    def prepare():
        calls.append(len(calls))
        d = recipe.data
        return prepare_tokens(d.corpus, val_fraction=d.val_fraction, cache_dir=d.cache_dir)

    module = TokenDataModule(prepare, recipe.data, seed=0, max_steps=20)
    assert module.data is None and calls == []
    module.prepare_data()
    module.setup("fit")
    assert calls == [0, 1] and len(module.val_windows) == 1024 // 32
