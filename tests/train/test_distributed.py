"""Two CPU processes (gloo) train like one process with the same global batch: DDP launched by
torchrun, FSDP2 (trainer.strategy fsdp) launched by Lightning; FSDP2's sharded checkpoints
resume exactly and refuse bad resumes in one line.

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
import shutil
import sys

import pytest
import torch
from child_runs import (
    TINY_KEEL,
    grads,
    keelctl_command,
    max_abs_diff,
    max_rel_diff,
    metrics,
    run_child,
    set_args,
)
from safetensors.torch import load_file
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.config import load_recipe
from keelctl.train import train
from keelctl.train.resume import checkpoint_step

STEPS = 20
SHARED = ("trainer.activation_checkpointing=true", "optim.grad_clip=0.05")
TWO_RANKS = ("trainer.devices=2", "data.batch_size=2")
FSDP = ("trainer.strategy=fsdp", *TWO_RANKS)


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
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == STEPS


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


@pytest.fixture(scope="module")
def fsdp_run(one_process, tmp_path_factory):
    """The one-process recipe as FSDP2 over two CPU processes (gloo), batch 2 per rank."""
    _, sets = one_process
    run = tmp_path_factory.mktemp("fsdp") / "run"
    run_child(keelctl_command("train", TINY_KEEL, *set_args([*sets, *FSDP]), "--run-dir", run))
    return run, [*sets, *FSDP]


def test_two_process_fsdp2_equals_one_process(one_process, fsdp_run):
    """Real FSDP2 sharding (one unit per Block, DTensor gradients clipped over all shards)."""
    (reference, _), (run, _) = one_process, fsdp_run
    assert_same_training(run, reference)
    ckpt = run / "checkpoints" / "last.ckpt"  # sharded: a link to a folder of per-rank files
    assert ckpt.is_symlink() and sorted(p.suffix for p in ckpt.iterdir()).count(".distcp") == 2


def test_fsdp2_resume_from_sharded_checkpoint_equals_one_process_resume(
    one_process, fsdp_run, tmp_path
):
    (reference, sets), (run, fsdp_sets) = one_process, fsdp_run
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(reference, one)
    shutil.copytree(run, two, symlinks=True)
    longer = [f"trainer.max_steps={STEPS + 10}"]
    train(load_recipe(TINY_KEEL, [*sets, *longer]), one, resume=True, progress_bar=False)
    args = [*set_args([*fsdp_sets, *longer]), "--run-dir", two, "--resume"]
    run_child(keelctl_command("train", TINY_KEEL, *args))
    assert max_abs_diff(metrics(two), metrics(one)) < 1e-5
    assert metrics(two, ["lr"]).keys() == {(s, "lr") for s in range(STEPS + 10)}


def _resume(run, sets: list[str]):
    args = ["train", str(TINY_KEEL), *set_args(sets), "--run-dir", str(run), "--resume"]
    return CliRunner().invoke(app, [*args, "--max-steps", str(STEPS + 10)])


def _one_line_error(result, expected: str, run, before: dict) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert _contents(run) == before, "the run dir changed"


def _contents(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_sharded_checkpoint_missing_a_shard_is_refused(fsdp_run, tmp_path):
    run, sets = fsdp_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken, symlinks=True)
    (broken / "checkpoints" / "last.ckpt" / "__1_0.distcp").unlink()
    before = _contents(broken)
    _one_line_error(_resume(broken, sets), "lacks __1_0.distcp", broken, before)


def test_fsdp1_and_fsdp2_checkpoints_do_not_cross(one_process, fsdp_run, tmp_path):
    (reference, _), (run, fsdp_sets) = one_process, fsdp_run
    ddp = [s for s in fsdp_sets if not s.startswith("trainer.strategy")] + ["trainer.strategy=ddp"]
    before = _contents(run)
    _one_line_error(_resume(run, ddp), "sharded (FSDP2) checkpoint", run, before)
    # A full-file checkpoint written under fsdp: what keelctl's FSDP1 wrote.
    old = tmp_path / "fsdp1"
    shutil.copytree(reference, old)
    ckpt = torch.load(old / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["recipe"]["trainer"]["strategy"] = "fsdp"
    torch.save(ckpt, old / "checkpoints" / "last.ckpt")
    before = _contents(old)
    _one_line_error(_resume(old, fsdp_sets), "earlier FSDP1", old, before)
