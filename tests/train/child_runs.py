"""Helpers for the scaling and fault-tolerance tests (test_distributed, test_preemption, ...):
tiny runs in `python -m keelctl` subprocesses (one torch thread each) and their records side by
side."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_KEEL = ROOT / "recipes" / "tiny-keel.yaml"
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def keelctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "keelctl", *map(str, args)]


def run_child(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, env=CHILD_ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def metrics(run_dir: Path, columns=("train_loss", "val_loss", "lr", "tokens")) -> dict:
    """{(step, column): value} of the set cells of metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return {
            (int(r["step"]), c): float(r[c]) for r in csv.DictReader(f) for c in columns if r.get(c)
        }


def grads(run_dir: Path) -> dict:
    """{(step, sublayer): (param_grad_norm, stream_grad_norm)} of grads.csv."""
    with open(run_dir / "grads.csv", newline="") as f:
        return {
            (int(r["step"]), int(r["sublayer"])): (
                float(r["param_grad_norm"]),
                float(r["stream_grad_norm"]),
            )
            for r in csv.DictReader(f)
        }


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    return max(abs(a[k] - b[k]) for k in a)


def max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    return max(abs(x - y) / abs(x) for k in a for x, y in zip(a[k], b[k], strict=True))
