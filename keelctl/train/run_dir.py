"""The run dir before training: is it free (or resumable), what does its checkpoint hold, and
which earlier records does a resumed run keep. Layout: docs/runs.md."""

from __future__ import annotations

import csv
import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from keelctl.config import RecipeConfig
from keelctl.data import tokenizer_from_dict
from keelctl.errors import KeelError
from keelctl.runs import (
    CHECKPOINTS,
    CONFIG_YAML,
    METRICS_CSV,
    MODEL_JSON,
    SUMMARY_JSON,
    atomic_path,
)
from keelctl.train.module import TOKENIZER_KEY

# Keys a resumed run may change; any other difference would make the resumed run a different
# experiment (or break the data position, which assumes constant sequences per step).
RESUMABLE_CHANGES = frozenset(
    {
        "name",
        "description",
        "trainer.max_steps",
        "trainer.accelerator",
        "trainer.log_every",
        "trainer.val_every",
        "trainer.grad_flow_every",
        "trainer.compile",
        "trainer.activation_checkpointing",
        "data.num_workers",
        "data.cache_dir",
    }
)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    started = [
        n
        for n in (CONFIG_YAML, CHECKPOINTS, METRICS_CSV, MODEL_JSON, SUMMARY_JSON)
        if (run_dir / n).exists()
    ]
    if started and not resume:
        raise KeelError(
            f"run dir {run_dir} already holds a run ({', '.join(started)}); pass --resume to "
            "continue it (from checkpoints/last.ckpt), or delete it, or choose another --run-dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise KeelError(
            f"run dir {run_dir} is not writable ({e.strerror}); choose another --run-dir"
        ) from None


def resume_state(last_ckpt: Path, recipe: RecipeConfig) -> dict:
    """Tokenizer and step of the checkpoint, after checking the recipe still matches it."""
    if not last_ckpt.is_file():
        raise KeelError(
            f"--resume: no checkpoint at {last_ckpt}; train without --resume to start this run"
        )
    ckpt = read_checkpoint(last_ckpt)
    try:
        saved = RecipeConfig(**ckpt["hyper_parameters"]["recipe"]).model_dump(mode="json")
        step, tokenizer = ckpt["global_step"], tokenizer_from_dict(ckpt[TOKENIZER_KEY])
    except (KeyError, TypeError, ValueError) as e:
        raise KeelError(f"{last_ckpt} is not a keelctl training checkpoint ({e})") from None
    changed = sorted(
        k for k in _diff(saved, recipe.model_dump(mode="json")) if k not in RESUMABLE_CHANGES
    )
    if changed:
        raise KeelError(
            f"--resume: the recipe differs from the checkpoint's in {', '.join(changed)}; "
            f"resume with the recipe in {last_ckpt.parent.parent / CONFIG_YAML} (docs/train.md "
            "lists the keys a resume may change)"
        )
    if step >= recipe.trainer.max_steps:
        raise KeelError(
            f"--resume: the run already reached step {step} >= trainer.max_steps "
            f"{recipe.trainer.max_steps}; pass a larger --max-steps to train further"
        )
    return {"tokenizer": tokenizer, "global_step": step}


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint, memory-mapped (cheap for big ones) and without unpickling code."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise KeelError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated or not a keelctl checkpoint"
        ) from None


def _diff(a: dict, b: dict, prefix: str = "") -> Iterator[str]:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            yield f"{prefix}{key}"


def make_loggers(run_dir: Path, resume_step: int) -> list[Logger]:
    """CSVLogger writing RUN/metrics.csv (a resumed run keeps the rows of the steps its
    checkpoint covers), and TensorBoard under RUN/tensorboard when it is installed."""
    previous = _csv_rows(run_dir / METRICS_CSV) if resume_step else []
    csv_logger = CSVLogger(save_dir=run_dir, name="", version="")
    _ = csv_logger.experiment  # creating the writer removes the old metrics.csv
    for row in previous:
        step = int(row.pop("step"))
        if step < resume_step:
            csv_logger.log_metrics({k: _number(v) for k, v in row.items() if v != ""}, step=step)
    csv_logger.save()
    loggers: list[Logger] = [csv_logger]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
    return loggers


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_csv(path: Path, keep_steps_below: int) -> None:
    """Drop rows a resumed run will write again (those of steps after its checkpoint)."""
    rows = _csv_rows(path)
    if not rows:
        return
    kept = [r for r in rows if int(r["step"]) < keep_steps_below]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
