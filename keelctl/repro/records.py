"""Compact run records: what the protocols need of a finished run, in kilobytes, kept beside the
report (committed with it), so that a rerun on a fresh machine continues from them instead of
retraining. A record never holds weights or checkpoints.

    OUT/records/<run name>/
        config.yaml     the resolved recipe (plot-grads' reader needs it beside grads.csv)
        summary.json    train's summary (status, steps, final losses, wall time)
        metrics.csv     per-step training metrics (max-lr's loss curve along the ramp)
        grads.csv       gradient flow every trainer.grad_flow_every steps, when recorded
        <measure>.json  measurements that need the weights (depth-sweep's eval.json,
                        redundancy's ablation.json), taken right after training
        provenance.json what a bit-exact rerun needs, written when the run is trained: the
                        code version (git commit, "+dirty" with uncommitted changes), torch's
                        intra-op threads and OMP_NUM_THREADS, library versions, machine. CPU
                        losses depend on the thread count (a matmul's reduction is split per
                        thread): records before 2026-12-07 hold none; they were trained with
                        one thread (docs/repro.md, "Rerunning a record exactly")

Protocols share runs (redundancy and grad-flow reuse depth-sweep's), so a run's record is also
looked for in the sibling report folders (OUT/../*/records/<run name>): its training files are
copied (kilobytes), and only a measurement no record holds needs the run dir, or a retrain.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from keelctl.atomic import atomic_path
from keelctl.runs import (
    CONFIG_YAML,
    FINISHED,
    GRADS_CSV,
    METRICS_CSV,
    PROVENANCE_JSON,
    SUMMARY_JSON,
    Run,
)

RECORDS = "records"
# summary.json last: a record with a summary is complete
TRAINING_FILES = (CONFIG_YAML, METRICS_CSV, GRADS_CSV, PROVENANCE_JSON, SUMMARY_JSON)


def record_dir(out: Path, name: str) -> Path:
    return Path(out) / RECORDS / name


def has(record: Path, measures: tuple[str, ...] = ()) -> bool:
    """The record holds a finished run's training files and every measure in `measures`."""
    run = Run(record)
    return run.state == FINISHED and all(run.has_measure(m) for m in measures)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_training(run_dir: Path, record: Path) -> None:
    """Copy a finished run's training files into its record, summary.json last."""
    for name in TRAINING_FILES:
        if (Path(run_dir) / name).is_file():
            _copy(Path(run_dir) / name, record / name)


def code_version() -> str | None:
    """The git commit keelctl runs from, "+dirty" when files differ from it; None outside git."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "keelctl")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict:
    """What a bit-exact rerun of a run trained in this process needs (see the module doc)."""
    import lightning
    import numpy
    import torch

    from keelctl import __version__

    return {
        "code_version": code_version(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "versions": {
            "keelctl": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "numpy": numpy.__version__,
        },
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def _candidates(out: Path, name: str) -> list[Path]:
    own = record_dir(out, name)
    siblings = sorted(Path(out).parent.glob(f"*/{RECORDS}/{name}"))
    return [own] + [s for s in siblings if s.resolve() != own.resolve()]


def find(out: Path, name: str) -> Path | None:
    """The record of run `name` holding its training files, here or in a sibling report's."""
    return next((c for c in _candidates(out, name) if has(c)), None)


def missing(out: Path, name: str, measures: tuple[str, ...]) -> tuple[bool, list[str]]:
    """(whether no record here or in a sibling holds the run's training files, the measures
    none of them holds): what completing the record still costs. Writes nothing."""
    found = [c for c in _candidates(out, name) if has(c)]
    return not found, [m for m in measures if not any(Run(c).has_measure(m) for c in found)]


def adopt(out: Path, name: str, measures: tuple[str, ...]) -> Path | None:
    """This protocol's record of run `name`, completed from sibling report folders' records
    where they hold the missing files. Returns it when it holds everything `measures` asks
    for, else None (the run dir is needed)."""
    own, *siblings = _candidates(out, name)
    for sibling in (s for s in siblings if has(s)):
        if not has(own):
            save_training(sibling, own)
        for m in measures:
            if not Run(own).has_measure(m) and Run(sibling).has_measure(m):
                _copy(sibling / f"{m}.json", own / f"{m}.json")
    return own if has(own, measures) else None
