"""Two CPU processes (gloo) train like one process with the same global batch: DDP launched by
torchrun, FSDP launched by Lightning (through fsdp_on_cpu.py).

One process: batch 4 per step. Two processes: batch 2 each; rank r reads samples r, r + 2, ...
(keelctl/train/datamodule.py), so each step's four sequences are the same four, and the
averaged gradient is the gradient of the same mean loss. Only the summation order differs:
measured differences are below 1e-6 in every loss and lr over 20 steps and below 2e-7
(relative) in grads.csv; the tolerances are 1e-5 and 1e-5.

Activation checkpointing and a small grad_clip (0.05, below every step's gradient norm, so every
step is clipped) are on in all three runs, so they are checked under DDP and FSDP too.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from scale_helpers import (
    FSDP_ON_CPU,
    TINY_KEEL,
    grads,
    max_abs_diff,
    max_rel_diff,
    metrics,
    run_child,
    set_args,
)

from keelctl.config import load_recipe
from keelctl.train import train

STEPS = 20
SHARED = ("trainer.activation_checkpointing=true", "optim.grad_clip=0.05")
TWO_RANKS = ("trainer.devices=2", "data.batch_size=2")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_train_sets):
    root = tmp_path_factory.mktemp("one")
    sets = [*tiny_train_sets(root / "cache", STEPS), "trainer.accelerator=cpu", *SHARED]
    train(load_recipe(TINY_KEEL, sets), root / "run", progress_bar=False)
    return root / "run", sets


def assert_same_training(run, reference):
    assert max_abs_diff(metrics(run), metrics(reference)) < 1e-5
    # tokens: all ranks counted once (4 sequences x 32 tokens a step), not per rank or twice.
    assert metrics(run, ["tokens"]) == {(s, "tokens"): (s + 1) * 128.0 for s in range(STEPS)}
    # Per-sub-layer gradient norms: the full model's, not one rank's part.
    assert max_rel_diff(grads(run), grads(reference)) < 1e-5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens_seen"] == STEPS * 128
    exported = load_file(run / "model.safetensors")
    expected = load_file(reference / "model.safetensors")
    assert exported.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(exported[name], weight, rtol=0, atol=1e-5, msg=name)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS


def test_torchrun_ddp_on_two_processes_equals_one_process(one_process, tmp_path):
    """Launched as docs/scale.md says, on a cold token cache (rank 0 tokenizes; rank 1 waits in
    Lightning's prepare_data barrier and reads the cache)."""
    reference, sets = one_process
    run = tmp_path / "ddp"
    sets = [*sets, "trainer.strategy=ddp", *TWO_RANKS, f"data.cache_dir={tmp_path / 'cold'}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = run_child(
        [*torchrun, "-m", "keelctl", "train", TINY_KEEL, *set_args(sets), "--run-dir", run]
    )
    assert result.stdout.count("tiny-keel: finished") == 1  # rank zero prints the summary
    assert_same_training(run, reference)


def test_two_process_fsdp_on_cpu_equals_one_process(one_process, tmp_path):
    """Real FSDP sharding on CPU, with three CPU-only obstacles lifted (fsdp_on_cpu.py)."""
    reference, sets = one_process
    run = tmp_path / "fsdp"
    run_child([sys.executable, FSDP_ON_CPU, run, TINY_KEEL, *sets, *TWO_RANKS])
    assert_same_training(run, reference)
