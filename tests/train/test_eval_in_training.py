"""trainer.eval_every / eval_tasks / eval_limit: lm-eval tasks on the model being trained, logged
against step and tokens to metrics.csv and the trackers; training itself is unchanged; a
failing task is logged and training goes on; a resumed run keeps the eval history; bad keys
and unknown tasks fail before step 1 in one line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.eval.runner import evaluate_runs
from keelctl.train import train

TASK, LIMIT = "keel_hops_k1", 12
ACC = f"eval/{TASK}/acc"
# seq_len 64: a one-hop session (about 75 bytes) loses only its first line to the context.
EVAL = ("data.seq_len=64", f"trainer.eval_tasks={TASK}", f"trainer.eval_limit={LIMIT}")


def columns(run: Path, *names: str) -> dict[str, dict[int, float]]:
    """{column: {step: value}} of the set cells of metrics.csv."""
    out: dict = {name: {} for name in names}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for name in names:
                if row.get(name):
                    out[name][int(row["step"])] = float(row[name])
    return out


def final_acc(run: Path) -> float:
    """`keelctl eval`'s score of the finished run on the same items (same batch size)."""
    report = evaluate_runs([run], tasks=[TASK], limit=LIMIT, batch_size=4)
    return report["runs"][0]["results"][TASK]["acc,none"]


def test_scores_are_logged_against_step_and_tokens_and_leave_training_unchanged(
    tiny_recipe, tmp_path
):
    with_eval = tmp_path / "with-eval"
    train(tiny_recipe(*EVAL, "trainer.eval_every=4", max_steps=10), with_eval, progress_bar=False)
    without = tmp_path / "without"
    train(tiny_recipe("data.seq_len=64", max_steps=10), without, progress_bar=False)

    got = columns(with_eval, ACC, "eval/seconds", "train_loss", "val_loss")
    # Steps 4, 8 and the last (10), in Lightning's 0-based rows.
    assert sorted(got[ACC]) == [3, 7, 9]
    assert all(v in {i / LIMIT for i in range(LIMIT + 1)} for v in got[ACC].values())
    assert all(s > 0 for s in got["eval/seconds"].values())
    with open(with_eval / "metrics.csv", newline="") as f:
        eval_rows = [r for r in csv.DictReader(f) if r.get(ACC)]
    assert [float(r["tokens"]) for r in eval_rows] == [4 * 256, 8 * 256, 10 * 256]
    # The last score is what `keelctl eval` gives the exported model.
    assert got[ACC][9] == final_acc(with_eval)
    # lm-eval seeds the generators and the adapter switches modes: training must not notice.
    base = columns(without, "train_loss", "val_loss")
    assert got["train_loss"] == base["train_loss"] and got["val_loss"] == base["val_loss"]


def test_a_failing_task_is_logged_and_training_goes_on(tiny_recipe, tmp_path, monkeypatch, caplog):
    import keelctl.eval.harness as harness

    real, calls = harness.run_tasks, []

    def fails_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("dataset went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "run_tasks", fails_first)
    run = tmp_path / "run"
    summary = train(
        tiny_recipe(*EVAL, "trainer.eval_every=3", max_steps=6), run, progress_bar=False
    )
    assert summary["status"] == "finished" and summary["steps"] == 6
    got = columns(run, "eval/failed", ACC)
    assert got["eval/failed"] == {2: 1.0} and sorted(got[ACC]) == [5]
    assert "in-training eval at step 3 failed (RuntimeError: dataset went away)" in caplog.text


class StopAt(L.Callback):
    """SIGTERM while step `step` + 1 trains: the run stops after it (preempted)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_preemption_and_resume_keep_the_eval_history_in_csv_and_trackers(
    tiny_recipe, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    recipe = tiny_recipe(
        *EVAL, "trainer.eval_every=2", "trainer.loggers=csv,tensorboard,mlflow", max_steps=6
    )
    run = tmp_path / "run"
    first = train(recipe, run, progress_bar=False, callbacks=[StopAt(3)])
    assert first["status"] == "preempted" and first["steps"] == 4
    before = columns(run, ACC)[ACC]
    assert sorted(before) == [1, 3]
    train(recipe, run, resume="auto", progress_bar=False)
    history = columns(run, ACC)[ACC]
    assert sorted(history) == [1, 3, 5] and {s: history[s] for s in before} == before

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {e.step: e.value for e in events.Scalars(ACC)} == history
    import json

    from mlflow.tracking import MlflowClient

    mlflow_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    assert {m.step: m.value for m in client.get_metric_history(mlflow_id, ACC)} == history


def test_unknown_task_and_bad_keys_fail_before_step_one_in_one_line(tiny_args, tmp_path):
    cases = {
        ("trainer.eval_every=2", "trainer.eval_tasks=no_such_task"): "unknown task(s) no_such_task",
        ("trainer.eval_every=0", f"trainer.eval_tasks={TASK}"): "trainer.eval_every",
        ("trainer.eval_every=2.5", f"trainer.eval_tasks={TASK}"): "trainer.eval_every",
        ("trainer.eval_every=2",): "trainer.eval_every needs trainer.eval_tasks",
        (f"trainer.eval_tasks={TASK}",): "trainer.eval_tasks needs trainer.eval_every",
    }
    for i, (sets, message) in enumerate(cases.items()):
        run = tmp_path / f"run-{i}"
        result = CliRunner().invoke(app, ["train", *tiny_args(*sets), "--run-dir", str(run)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (run / "metrics.csv").exists()


def test_two_ddp_processes_evaluate_on_rank_zero_without_deadlock(tiny_sets, tmp_path):
    """torchrun, 2 CPU processes (gloo): rank 0 evaluates while rank 1 waits at a barrier; the
    run finishes (a deadlock would hit the timeout) with the evaluations in metrics.csv."""
    root = Path(__file__).resolve().parents[2]
    sets = [
        *tiny_sets(*EVAL, "trainer.eval_every=3", max_steps=6),
        "trainer.accelerator=cpu",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "data.batch_size=2",
    ]
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += ["-m", "keelctl", "train", str(root / "recipes" / "tiny-keel.yaml")]
    command += [arg for s in sets for arg in ("--set", s)] + ["--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = columns(run, ACC)[ACC]
    assert sorted(got) == [2, 5]
    assert got[5] == final_acc(run)  # rank 0 scored the whole trained model
