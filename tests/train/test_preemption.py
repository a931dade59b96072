"""A stop signal ends a run after the current step with a checkpoint; `--resume auto` then
continues it as if nothing happened. Checkpoints by time, and the last K kept."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
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


def ckpt_step(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


class SignalAt(L.Callback):
    """Sends this process `signum` while step `step` trains, and again in the middle of every
    checkpoint save after it (the handler must shrug the second one off)."""

    def __init__(self, step: int, signum=signal.SIGTERM):
        self.step, self.signum, self.saves_signalled = step, signum, 0

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step >= self.step:
            self.saves_signalled += 1
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum,step", [(signal.SIGTERM, 13), (signal.SIGUSR1, 20)])
def test_a_signal_stops_after_the_step_and_auto_resume_is_exact(
    cpu_tiny_sets, tmp_path, signum, step
):
    """Step 13: an ordinary step; step 20: a validation step (last.ckpt follows validation)."""
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=30))
    run = tmp_path / "run"
    stopper = SignalAt(step, signum)
    stopped = train(recipe, run, resume="auto", progress_bar=False, callbacks=[stopper])
    # The step running when the signal came is finished and is in the checkpoint.
    assert stopped["status"] == "preempted" and stopped["signal"] == signum.name
    assert stopped["steps"] == step + 1 == ckpt_step(run / "checkpoints" / "last.ckpt")
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    assert stopper.saves_signalled >= 1 and not (run / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back

    resumed = train(recipe, run, resume="auto", progress_bar=False)
    straight = train(recipe, tmp_path / "straight", resume="auto", progress_bar=False)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == step + 1
    assert straight["resumed_from_step"] is None
    assert max_abs_diff(metrics(run), metrics(tmp_path / "straight")) <= 1e-6
    assert grads(run) == grads(tmp_path / "straight")


def test_sigterm_to_the_cli_at_a_random_moment_then_the_same_command_finishes(
    cpu_tiny_sets, tmp_path
):
    # 300 steps take 3 s or more even on a fast idle machine (about 10-50 ms a step), so a
    # signal within 0.5 s of step 0 always lands while the run is training.
    sets = cpu_tiny_sets(max_steps=300)
    run = tmp_path / "run"
    command = keelctl_command("train", TINY_KEEL, *set_args(sets), "--run-dir", run, "--resume")
    command.append("auto")
    delay = random.Random().uniform(0.0, 0.5)
    with open(tmp_path / "stderr.txt", "w") as stderr:
        child = subprocess.Popen(
            command, env=CHILD_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
        )
        deadline = time.monotonic() + 180
        while not (run / "grads.csv").exists():  # step 0 is recorded: training has started
            assert child.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 128 + signal.SIGTERM, (delay, child.returncode)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted"
    assert summary["steps"] == ckpt_step(run / "checkpoints" / "last.ckpt") < 300

    recipe = load_recipe(TINY_KEEL, sets)  # what the same command does again, in-process
    assert train(recipe, run, resume="auto", progress_bar=False)["status"] == "finished"
    train(recipe, tmp_path / "straight", progress_bar=False)
    assert max_abs_diff(metrics(run), metrics(tmp_path / "straight")) <= 1e-6
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == summary["steps"]


def test_checkpoints_by_time_and_the_last_k_kept(cpu_tiny_sets, tmp_path):
    """checkpoint_every_minutes tiny enough to save after every step: last.ckpt follows the
    steps between validations, and keep_checkpoints 3 keeps the 3 newest step files."""
    recipe = load_recipe(
        TINY_KEEL,
        cpu_tiny_sets(
            "trainer.checkpoint_every_minutes=1e-9", "trainer.keep_checkpoints=3", max_steps=14
        ),
    )

    class Watch(L.Callback):
        seen: list[int] = []

        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step:
                self.seen.append(ckpt_step(tmp_path / "run" / "checkpoints" / "last.ckpt"))

    train(recipe, tmp_path / "run", progress_bar=False, callbacks=[Watch()])
    assert Watch.seen == list(range(1, 14))  # every step's state, validation steps included
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    names = [f"step-{s:07d}.ckpt" for s in (12, 13, 14)]
    assert files == ["best.ckpt", "last.ckpt", *names]
    assert ckpt_step(tmp_path / "run" / "checkpoints" / names[-1]) == 14


def test_resume_auto_refuses_another_recipes_run_and_a_truncated_checkpoint(
    cpu_tiny_sets, tmp_path
):
    recipe = load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=10))
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text(
        load_recipe(TINY_KEEL, cpu_tiny_sets("optim.lr=0.1", max_steps=10)).model_dump_json()
    )
    with pytest.raises(KeelError, match="holds another recipe's run .* differs in optim.lr"):
        train(recipe, run, resume="auto", progress_bar=False)

    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(KeelError, match=f"cannot read checkpoint {ckpt}"):
        train(recipe, run, resume="auto", progress_bar=False)
    assert ckpt.read_bytes() == b"PK\x03\x04 cut short"  # nothing deleted


def test_under_slurm_sigusr1_requeues_the_job_and_sigterm_does_not(tmp_path, monkeypatch):
    """A fake `scontrol` on PATH records its arguments; Lightning's own requeue is off."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from keelctl.train.preemption import cluster_plugins, requeue_slurm_job

    calls = tmp_path / "calls.txt"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    requeue_slurm_job(signal.SIGTERM)  # scancel or preemption: SLURM decides
    assert not calls.exists()
    requeue_slurm_job(signal.SIGUSR1)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    requeue_slurm_job(signal.SIGUSR1)
    assert calls.read_text().splitlines() == ["requeue 4242", "requeue 77_3"]

    assert cluster_plugins() == []  # not an srun task
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "keel-512")
    (plugin,) = cluster_plugins()
    assert isinstance(plugin, SLURMEnvironment) and not plugin.auto_requeue


def test_a_signal_during_the_final_export_waits_for_it(cpu_tiny_sets, tmp_path, monkeypatch):
    """A run killed while exporting could not be resumed (its checkpoint is at max_steps)."""
    from keelctl.runs import Run

    def save_model_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        save_model(*args, **kwargs)

    save_model = Run.save_model
    monkeypatch.setattr(Run, "save_model", save_model_signalled)
    summary = train(
        load_recipe(TINY_KEEL, cpu_tiny_sets(max_steps=3)), tmp_path / "run", progress_bar=False
    )
    assert summary["status"] == "finished" and (tmp_path / "run" / "model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
