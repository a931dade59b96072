"""A killed run resumes exactly; checkpoint writes are atomic; checkpoints load without code."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from child_runs import (
    CHILD_ENV,
    ROOT,
    TINY_KEEL,
    grads,
    keelctl_command,
    max_abs_diff,
    metrics,
    set_args,
)

from keelctl.config import load_recipe
from keelctl.errors import KeelError
from keelctl.train import train
from keelctl.train.checkpoint_io import AtomicCheckpointIO


def checkpoint_step(path) -> int:
    return torch.load(path, weights_only=True)["global_step"] if path.is_file() else -1


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_losses(cpu_tiny_sets, tmp_path):
    sets = cpu_tiny_sets(max_steps=60)
    run, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoints" / "last.ckpt"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        child = subprocess.Popen(
            keelctl_command("train", TINY_KEEL, *set_args(sets), "--run-dir", run),
            env=CHILD_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        # Reading last.ckpt while the run rewrites it is safe: writes are atomic.
        while checkpoint_step(ckpt) < 20:
            assert child.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint at step 20 within 3 minutes"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    killed_at = checkpoint_step(ckpt)
    assert killed_at < 60

    recipe = load_recipe(TINY_KEEL, sets)
    resumed = train(recipe, run, resume=True, progress_bar=False)
    train(recipe, tmp_path / "straight", progress_bar=False)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == killed_at
    assert max_abs_diff(metrics(run), metrics(tmp_path / "straight")) <= 1e-6
    assert grads(run) == grads(tmp_path / "straight")


KILLED_WHILE_SAVING = """
import os, signal, sys, torch
from keelctl.atomic import atomic_path

class KillMe:  # pickling it is the middle of the save: the file exists and is partly written
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

with atomic_path(sys.argv[1]) as tmp:  # what AtomicCheckpointIO.save_checkpoint does
    torch.save({"weights": torch.ones(1000), "then": KillMe()}, tmp)
"""


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 10, "w": torch.zeros(3)}, ckpt)
    child = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, ckpt], env=CHILD_ENV)
    assert child.returncode == -signal.SIGKILL
    assert AtomicCheckpointIO().load_checkpoint(ckpt)["global_step"] == 10
    (partial,) = [p for p in ckpt.parent.iterdir() if p.name != "last.ckpt"]
    assert partial.name.startswith(".last.ckpt.") and partial.suffix == ".tmp"


class PoisonSecondSave(L.Callback):
    """Makes the checkpoint save after step 20 fail half way (an unpicklable entry)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == 20:
            checkpoint["unpicklable"] = lambda: None


def test_a_failed_save_keeps_the_previous_checkpoint_and_resume_cleans_up(cpu_tiny_sets, tmp_path):
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=30))
    run = tmp_path / "run"
    with pytest.raises(Exception, match="pickle"):
        train(recipe, run, progress_bar=False, callbacks=[PoisonSecondSave()])
    ckpt_dir = run / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert checkpoint_step(ckpt_dir / "last.ckpt") == 10

    (ckpt_dir / ".last.ckpt.abc123.tmp").write_bytes(b"PK left by a killed save")
    assert train(recipe, run, resume=True, progress_bar=False)["steps"] == 30
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_checkpoints_never_unpickle_code(cpu_tiny_sets, tmp_path, trained_run_dir):
    """A checkpoint holding a pickled callable is refused, by resume and by the checkpoint IO."""
    ckpt = torch.load(trained_run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["payload"] = print  # any global a weights_only load does not allow
    evil = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evil.parent.mkdir(parents=True)
    torch.save(ckpt, evil)
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=60))
    with pytest.raises(KeelError, match="could run code; keelctl does not load it"):
        train(recipe, tmp_path / "run", resume=True, progress_bar=False)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(evil)
