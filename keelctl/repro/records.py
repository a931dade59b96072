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

Protocols share runs (redundancy and grad-flow reuse depth-sweep's), so a run's record is also
looked for in the sibling report folders (OUT/../*/records/<run name>): its training files are
copied (kilobytes), and only a measurement no record holds needs the run dir, or a retrain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from keelctl.runs import (
    CONFIG_YAML,
    GRADS_CSV,
    METRICS_CSV,
    SUMMARY_JSON,
    atomic_path,
    atomic_write_json,
)

RECORDS = "records"
TRAINING_FILES = (CONFIG_YAML, SUMMARY_JSON, METRICS_CSV, GRADS_CSV)


def record_dir(out: Path, name: str) -> Path:
    return Path(out) / RECORDS / name


def has(record: Path, measures: tuple[str, ...] = ()) -> bool:
    """The record holds a finished run's training files and every measure in `measures`."""
    path = record / SUMMARY_JSON
    return (
        path.is_file()
        and json.loads(path.read_text()).get("status") != "preempted"
        and all((record / f"{m}.json").is_file() for m in measures)
    )


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_training(run_dir: Path, record: Path) -> None:
    """Copy a finished run's training files into its record; summary.json last, so a record
    with a summary is complete."""
    for name in (CONFIG_YAML, METRICS_CSV, GRADS_CSV, SUMMARY_JSON):
        if (Path(run_dir) / name).is_file():
            _copy(Path(run_dir) / name, record / name)


def _candidates(out: Path, name: str) -> list[Path]:
    own = record_dir(out, name)
    siblings = sorted(Path(out).parent.glob(f"*/{RECORDS}/{name}"))
    return [own] + [s for s in siblings if s.resolve() != own.resolve()]


def missing(out: Path, name: str, measures: tuple[str, ...]) -> tuple[bool, list[str]]:
    """(whether no record here or in a sibling holds the run's training files, the measures
    none of them holds): what completing the record still costs. Writes nothing."""
    found = [c for c in _candidates(out, name) if has(c)]
    return not found, [m for m in measures if not any((c / f"{m}.json").is_file() for c in found)]


def adopt(out: Path, name: str, measures: tuple[str, ...]) -> Path | None:
    """This protocol's record of run `name`, completed from sibling report folders' records
    where they hold the missing files. Returns it when it holds everything `measures` asks
    for, else None (the run dir is needed)."""
    own, *siblings = _candidates(out, name)
    for sibling in (s for s in siblings if has(s)):
        if not has(own):
            save_training(sibling, own)
        for m in measures:
            if not (own / f"{m}.json").is_file() and (sibling / f"{m}.json").is_file():
                _copy(sibling / f"{m}.json", own / f"{m}.json")
    return own if has(own, measures) else None


def save_measure(record: Path, measure: str, data: dict) -> None:
    atomic_write_json(record / f"{measure}.json", data)


def load_measure(record: Path, measure: str) -> dict:
    return json.loads((record / f"{measure}.json").read_text())


def summary(record: Path) -> dict:
    return json.loads((record / SUMMARY_JSON).read_text())
