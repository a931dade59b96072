"""Measure what a stop signal costs: SIGTERM a tiny `keelctl train --resume auto` run at a random
moment, run the same command again, and compare its per-step records with an uninterrupted run.

    python scripts/preempt_resume.py --out /tmp/preempt --seeds 1 2 3
    python scripts/preempt_resume.py --out /tmp/preempt-ddp --seeds 1 2 --ddp   # 2 CPU processes

One JSON line per seed: the step the run stopped after, the step in last.ckpt, seconds from the
signal to last.ckpt being written and to the exit, the exit status, and the largest difference
in train_loss / val_loss / lr / tokens between the resumed and the uninterrupted run (metrics.csv)
and whether grads.csv is identical. Results: docs/scale.md (Stop signals).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = (  # tests/conftest.py's tiny run: d_model 32, 2 blocks, seq_len 32, batch 4
    "model.d_model=32 model.n_blocks=2 model.ffn_hidden=96 model.max_seq_len=64 data.seq_len=32 "
    "data.batch_size=4 data.val_fraction=0.1 data.val_tokens=1024 data.max_bytes=null "
    "optim.warmup_steps=5 trainer.val_every=10 trainer.grad_flow_every=10 trainer.loggers=[csv] "
    "trainer.accelerator=cpu"
).split()
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "data.batch_size=2"]  # same global batch


def rows(path: Path, key) -> dict:
    with open(path, newline="") as f:
        return {key(r): r for r in csv.DictReader(f)}


def metric_diff(a: Path, b: Path) -> float:
    names = ("train_loss", "val_loss", "lr", "tokens")
    ra, rb = (
        rows(p / "metrics.csv", lambda r: r["step"] + (r["val_loss"] and "v")) for p in (a, b)
    )
    assert ra.keys() == rb.keys(), sorted(ra.keys() ^ rb.keys())[:5]
    return max(abs(float(ra[k][n]) - float(rb[k][n])) for k in ra for n in names if ra[k][n])


def measure(out: Path, seed: int, ddp: bool, max_steps: int, span: float) -> dict:
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        lines = [f"def function_{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(30)]
        (corpus / f"doc_{i:02d}.py").write_text("".join(lines))
    sets = [*TINY, *(DDP if ddp else []), f"data.corpus={corpus}", f"data.cache_dir={out}/cache"]
    sets.append(f"trainer.max_steps={max_steps}")
    args = [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(run: Path) -> list[str]:
        recipe = ROOT / "recipes" / "tiny-keel.yaml"
        return [sys.executable, "-m", "keelctl", "train", str(recipe), *args, "--run-dir", str(run)]

    run, straight = out / f"seed{seed}" / "stopped", out / f"seed{seed}" / "straight"
    delay = random.Random(seed).uniform(0.0, span)
    child = subprocess.Popen(
        [*command(run), "--resume", "auto"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    while not (run / "grads.csv").exists():  # step 0 is recorded: training has begun
        time.sleep(0.01)
    time.sleep(delay)
    sent = time.time()
    child.send_signal(signal.SIGTERM)  # the launching process only, under ddp too
    status = child.wait()
    exited = time.time() - sent
    summary = json.loads((run / "summary.json").read_text())
    if summary["status"] != "preempted":  # the signal came after the last step
        return {"seed": seed, "signal_after_s": round(delay, 2), "status": summary["status"]}
    last = run / "checkpoints" / "last.ckpt"
    import torch

    saved_step = torch.load(last, weights_only=True)["global_step"]
    saved_after = last.stat().st_mtime - sent
    for target, extra in ((run, ["--resume", "auto"]), (straight, [])):
        done = subprocess.run([*command(target), *extra], env=env, cwd=ROOT, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    sublayer = lambda r: (r["step"], r["sublayer"])  # noqa: E731
    return {
        "processes": 2 if ddp else 1,
        "seed": seed,
        "signal_after_s": round(delay, 2),
        "exit_status": status,
        "status": summary["status"],
        "stopped_after_steps": summary["steps"],
        "last_ckpt_step": saved_step,
        "ckpt_written_s": round(saved_after, 2),
        "exited_s": round(exited, 2),
        "max_abs_diff": metric_diff(run, straight),
        "grads_identical": rows(run / "grads.csv", sublayer)
        == rows(straight / "grads.csv", sublayer),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ddp", action="store_true", help="2 CPU processes (gloo)")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--span", type=float, default=3.0, help="signal within this many s")
    a = parser.parse_args()
    for seed in a.seeds:
        print(json.dumps(measure(a.out, seed, a.ddp, a.max_steps, a.span)), flush=True)


if __name__ == "__main__":
    main()
