"""The run directory and `Run`, the one reader and writer of its files (docs/runs.md).

    RUN/config.yaml          resolved recipe (train)
    RUN/model.json           {"model": ModelConfig, "tokenizer": {...}, "keelctl_version", ...}
    RUN/model.safetensors    final weights, loadable without Lightning
    RUN/metrics.csv          Lightning CSVLogger output
    RUN/checkpoints/         last.ckpt, best.ckpt (Lightning)
    RUN/grads.csv            per-sub-layer gradient norms (plot-grads callback)
    RUN/summary.json         final numbers of the training run
    RUN/trackers.json        W&B / MLflow run ids, so a resumed run logs into the same runs
    RUN/provenance.json      what a bit-exact rerun needs (repro)
    RUN/<measure>.json       measurements taken after training (repro)

A repro record (keelctl/repro/records.py) holds the same files without weights or checkpoints
and is read through a Run too. Every write is atomic (keelctl.atomic).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from keelctl.atomic import atomic_path, atomic_write_json, atomic_write_text
from keelctl.config import (
    DataConfig,
    RecipeConfig,
    dump_recipe,
    format_validation_error,
    load_recipe,
)
from keelctl.data.tokenizers import Tokenizer, tokenizer_from_dict
from keelctl.errors import KeelError, first_line
from keelctl.model import ModelConfig, Transformer, build_model

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
CONFIG_YAML = "config.yaml"
METRICS_CSV = "metrics.csv"
GRADS_CSV = "grads.csv"
SUMMARY_JSON = "summary.json"
PROVENANCE_JSON = "provenance.json"
TRACKERS_JSON = "trackers.json"  # {"wandb": run id, "mlflow": run id}
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
STEP_CKPT = re.compile(r"^step-(\d+)\.ckpt$")  # what trainer.keep_checkpoints keeps
GRADS_COLUMNS = ("step", "sublayer", "block", "kind", "param_grad_norm", "stream_grad_norm")

# Run.state: what `keelctl train --resume auto` (and a repro protocol) does with the run dir.
NEW = "new"  # nothing of a run yet: train starts it
INTERRUPTED = "interrupted"  # started, killed before its first checkpoint: starts over
RESUMABLE = "resumable"  # has checkpoints/last.ckpt and no final summary: resumes
FINISHED = "finished"  # summary.json says it ended (finished, stopped or diverged)
# What train writes first: a run dir holding any of these is started.
STARTED_BY = (CONFIG_YAML, CHECKPOINTS, METRICS_CSV, MODEL_JSON, SUMMARY_JSON)

# Model keys added after runs were recorded: left out of config_hash at these defaults, so a
# model that does not use them keeps the hash its reports and results already show.
_HASH_IGNORED_DEFAULTS = {"stream_dtype": "fp32", "norm_dtype": "fp32"}
_MODEL_JSON_HINT = "it was edited or comes from another tool: restore it, or train the run again"


def step_checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.ckpt"


def config_hash(cfg: ModelConfig) -> str:
    """Short stable hash of a model config (names a model shape in reports)."""
    data = cfg.model_dump(mode="json")
    for key, default in _HASH_IGNORED_DEFAULTS.items():
        if data.get(key) == default:
            del data[key]
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def heldout_data(run_data: DataConfig | None, data: str | None, unknown: str) -> DataConfig:
    """The data section whose validation split a model is scored on (eval, ablate-layers,
    plot-grads): a run's own, the split it was validated on; with --data SPEC, that data section
    (defaults when there is none) with SPEC as its corpus. `unknown` says why a source without
    a data section has no split: a KeelError asking for --data."""
    if data is not None:
        return (run_data or DataConfig()).model_copy(update={"corpus": data})
    if run_data is None:
        raise KeelError(f"{unknown}; pass --data SPEC")
    return run_data


def read_checkpoint_file(path: Path) -> dict:
    """A Lightning .ckpt file, memory-mapped (cheap for big ones) and without unpickling code
    (weights_only: tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:  # what weights_only refuses: code, or objects of any class
        raise KeelError(
            f"checkpoint {path} holds Python objects beyond tensors and plain data, which could "
            "run code; keelctl does not load it: use only checkpoints that keelctl wrote"
        ) from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise KeelError(
            f"cannot read checkpoint {path} ({first_line(e)}); "
            "it may be truncated or not a keelctl checkpoint"
        ) from None


class Run:
    """A run dir (or a repro record). The recipe and model.json, written once per run, are read
    once and cached (this object's own writes refresh them); files a run rewrites as it goes
    (summary, metrics, grads) are read on every call."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    @property
    def last_checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / LAST_CKPT

    def step_checkpoints(self) -> dict[int, Path]:
        """{step: path} of the step checkpoints the run kept, oldest first."""
        folder = self.path / CHECKPOINTS
        if not folder.is_dir():
            return {}
        found = {int(m.group(1)): p for p in folder.iterdir() if (m := STEP_CKPT.match(p.name))}
        return dict(sorted(found.items()))

    @property
    def started(self) -> list[str]:
        """The files of STARTED_BY that the run dir holds."""
        return [n for n in STARTED_BY if self.has(n)]

    @property
    def state(self) -> str:
        """NEW, INTERRUPTED, RESUMABLE or FINISHED; a preempted run's summary is not final (it
        resumes from its checkpoint, or starts over without one)."""
        if self.has(SUMMARY_JSON) and self.summary().get("status") != "preempted":
            return FINISHED
        if self.last_checkpoint.exists():
            return RESUMABLE
        return INTERRUPTED if self.started else NEW

    def _require_dir(self) -> None:
        if not self.path.is_dir():
            raise KeelError(
                f"run dir {self.path} does not exist; pass a directory made by `keelctl train`"
            )

    # ---- the recipe --------------------------------------------------------------------------

    @cached_property
    def recipe(self) -> RecipeConfig:
        self._require_dir()
        path = self.path / CONFIG_YAML
        if not path.is_file():
            raise KeelError(f"{path} is missing; is {self.path} a `keelctl train` run dir?")
        return load_recipe(path)

    def data_config(self) -> DataConfig | None:
        """The recipe's data section (the run's validation split), None without config.yaml."""
        return self.recipe.data if (self.path / CONFIG_YAML).is_file() else None

    def write_recipe(self, recipe: RecipeConfig) -> None:
        atomic_write_text(self.path / CONFIG_YAML, dump_recipe(recipe))
        self.recipe = recipe

    # ---- the exported model ------------------------------------------------------------------

    @cached_property
    def model_json(self) -> dict:
        path = self.path / MODEL_JSON
        self._require_dir()
        if not path.is_file():
            raise KeelError(f"{path} is missing; is {self.path} a finished `keelctl train` run?")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise KeelError(f"{path} is not valid JSON ({e.msg}); re-export the run") from e

    @cached_property
    def model_meta(self) -> tuple[ModelConfig, Tokenizer]:
        """The run's ModelConfig and tokenizer from model.json, without loading the weights."""
        meta, path = self.model_json, self.path / MODEL_JSON
        try:
            return ModelConfig(**meta["model"]), tokenizer_from_dict(meta["tokenizer"])
        except ValidationError as e:
            what = format_validation_error(e, ModelConfig, "model")
            raise KeelError(f"{path}: {what}; {_MODEL_JSON_HINT}") from None
        except (KeyError, ValueError) as e:
            raise KeelError(
                f"{path} is not a keelctl model description (no or bad {e}); {_MODEL_JSON_HINT}"
            ) from None

    def save_model(self, model: Transformer, tokenizer: Tokenizer, **extra) -> None:
        """Write model.safetensors and model.json (config + tokenizer + extra fields)."""
        from safetensors.torch import save_model as st_save_model

        from keelctl import __version__

        needed = sum(t.nbytes for t in model.state_dict().values())
        with atomic_path(self.path / MODEL_WEIGHTS, needed) as tmp:
            st_save_model(model, str(tmp))
        meta = {
            "model": model.config.model_dump(mode="json"),
            "tokenizer": tokenizer.to_dict(),
            "config_hash": config_hash(model.config),
            "keelctl_version": __version__,
            **extra,
        }
        atomic_write_json(self.path / MODEL_JSON, meta)
        self.__dict__.pop("model_json", None)
        self.__dict__.pop("model_meta", None)

    def load_model(self, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
        """(model, tokenizer), in eval mode, without Lightning."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model as st_load_model

        cfg, tokenizer = self.model_meta
        weights = self.path / MODEL_WEIGHTS
        if not weights.is_file():
            raise KeelError(f"{weights} is missing; is {self.path} a finished `keelctl train` run?")
        model = build_model(cfg)
        try:
            st_load_model(model, str(weights), strict=True, device=str(device))
        except (SafetensorError, RuntimeError, OSError) as e:
            raise KeelError(
                f"cannot load {weights} ({str(e).splitlines()[0]}); the file is damaged or does "
                f"not match {MODEL_JSON}: restore both from the same run, or train it again"
            ) from e
        return model.to(device).eval(), tokenizer

    # ---- what training recorded --------------------------------------------------------------

    def summary(self) -> dict:
        hint = f"is {self.path} a `keelctl train` run that ended?"
        return self._json(SUMMARY_JSON, hint, "`keelctl train`")

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY_JSON, summary)

    def tracker_ids(self) -> dict:
        """The W&B / MLflow run ids a resumed run logs into again; {} when none were kept."""
        path = self.path / TRACKERS_JSON
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise KeelError(
                f"{path} is not valid JSON; delete it to log the resumed run into new tracker runs"
            ) from None

    def write_tracker_ids(self, ids: dict) -> None:
        atomic_write_json(self.path / TRACKERS_JSON, ids)

    def metric(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one column of metrics.csv, rows where it is set (a last row cut
        short by a kill left out)."""
        self._metrics_path()  # a run without metrics.csv: say so
        steps, values = [], []
        for row in self.complete_rows(METRICS_CSV):
            if row.get(name, "") != "":
                steps.append(int(row["step"]))
                values.append(float(row[name]))
        return steps, values

    def metric_columns(self) -> list[str]:
        with open(self._metrics_path(), newline="") as f:
            return next(csv.reader(f), [])

    def _metrics_path(self) -> Path:
        path = self.path / METRICS_CSV
        if not path.is_file():
            raise KeelError(f"{path} is missing; pass a run dir made by `keelctl train`")
        return path

    def complete_rows(self, name: str) -> list[dict]:
        """The rows of a CSV of the run (metrics.csv, grads.csv) without a last row cut short
        by a killed writer; none when the file is missing."""
        path = self.path / name
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if None not in r.values() and None not in r and r["step"].isdigit()]

    def truncate_csv(self, name: str, keep_steps_below: int) -> None:
        """Drop the rows a resumed run will write again (those of steps after its checkpoint)."""
        rows = self.complete_rows(name)
        if not rows:
            return
        kept = [r for r in rows if int(r["step"]) < keep_steps_below]
        with atomic_path(self.path / name) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)

    def grads(self) -> tuple[list[int], np.ndarray]:
        """(steps, array (steps, sub-layers, 2) of param and stream gradient norms) of
        grads.csv. A step recorded twice (a resumed run re-recording it) keeps its last rows;
        a step with missing sub-layers (a run killed mid-write) is left out."""
        n_sublayers = self.recipe.model.n_sublayers
        path = self.path / GRADS_CSV
        if not path.is_file():
            raise KeelError(
                f"{path} is missing: this run recorded no gradient flow; train with "
                "trainer.grad_flow_every > 0, or measure fresh models with --at-init RECIPE"
            )
        text = path.read_text()
        lines = text.splitlines()
        if text and not text.endswith("\n"):
            lines = lines[:-1]  # a last line cut short by a kill mid-write
        reader = csv.reader(lines)
        header = tuple(next(reader, ()))
        if header != GRADS_COLUMNS:
            raise KeelError(
                f"{path} has columns {list(header)}, expected {list(GRADS_COLUMNS)}; "
                "was it written by keelctl's grad-flow callback?"
            )
        rows: dict[int, dict[int, tuple[float, float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                step, sub = int(row[0]), int(row[1])
                values = (float(row[4]), float(row[5]))
            except (ValueError, IndexError):
                raise KeelError(
                    f"{path} line {line} is malformed: {row}; fix or delete it"
                ) from None
            if not 0 <= sub < n_sublayers:
                raise KeelError(
                    f"{path} line {line} names sub-layer {sub}, but {self.path} has "
                    f"{n_sublayers} sub-layers"
                )
            rows.setdefault(step, {})[sub] = values
        steps = sorted(s for s, subs in rows.items() if len(subs) == n_sublayers)
        if not steps:
            raise KeelError(f"{path} holds no complete step yet; wait for the first recording step")
        return steps, np.array([[rows[s][i] for i in range(n_sublayers)] for s in steps])

    # ---- repro's additions: measures and provenance ------------------------------------------

    def has_measure(self, measure: str) -> bool:
        return (self.path / f"{measure}.json").is_file()

    def measure(self, measure: str) -> dict:
        return self._json(f"{measure}.json", "measure the run again", "keelctl repro")

    def save_measure(self, measure: str, data: dict) -> None:
        atomic_write_json(self.path / f"{measure}.json", data)

    def save_provenance(self, provenance: dict) -> None:
        atomic_write_json(self.path / PROVENANCE_JSON, provenance)

    def _json(self, name: str, missing_hint: str, writer: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise KeelError(f"{path} is missing; {missing_hint}")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise KeelError(
                f"{path} is not valid JSON ({e}); {writer} writes it whole, so it was changed "
                "afterwards: restore it, or leave this run out"
            ) from None
