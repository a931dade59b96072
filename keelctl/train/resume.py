"""Resuming a run dir: is it free (or resumable), what does its checkpoint hold, and which
earlier records does a resumed run keep. Layout: docs/runs.md."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from keelctl.config import RecipeConfig
from keelctl.data import tokenizer_from_dict
from keelctl.errors import KeelError, first_line
from keelctl.model import build_model
from keelctl.runs import CONFIG_YAML, METRICS_CSV, Run, read_checkpoint_file
from keelctl.train.checkpoint_io import check_checkpoint_layout, read_sharded_checkpoint
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
        "trainer.checkpoint_every_minutes",
        "trainer.keep_checkpoints",
        "trainer.loggers",
        "trainer.grad_flow_every",
        "trainer.eval_every",
        "trainer.eval_tasks",
        "trainer.eval_limit",
        "trainer.compile",
        "trainer.activation_checkpointing",
        "trainer.spike_rollback.enabled",
        "trainer.spike_rollback.factor",
        "trainer.spike_rollback.window",
        "trainer.spike_rollback.lr_scale",
        "trainer.spike_rollback.max_rollbacks",
        "data.num_workers",
        "data.cache_dir",
    }
)
# How the global batch is split over devices and micro-batches: a resume may change these (e.g.
# on fewer nodes, with more accumulation) while the global batch stays the same, which keeps the
# data position right. trainer.strategy may change too, except to or from fsdp (its optimizer
# state is keyed differently).
BATCH_LAYOUT = frozenset(
    {"trainer.devices", "trainer.num_nodes", "trainer.accumulate_grad_batches", "data.batch_size"}
)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    started = Run(run_dir).started
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


def resolve_resume(run_dir: Path, recipe: RecipeConfig, resume: bool | str) -> bool:
    """Whether to resume. resume="auto": yes when RUN/checkpoints/last.ckpt exists (resume_state
    then checks it); no when it does not, if the run dir is new or holds this recipe's run
    killed before its first checkpoint, which then starts over."""
    if resume != "auto":
        return bool(resume)
    run = Run(run_dir)
    if run.last_checkpoint.exists():
        return True
    if run.has(CONFIG_YAML):
        try:
            saved = run.recipe
        except KeelError:
            saved = None
        changed = _unresumable_changes(saved, recipe) if saved else ["(unreadable)"]
        if changed:
            raise KeelError(
                f"--resume auto: run dir {run_dir} holds another recipe's run (its {CONFIG_YAML} "
                f"differs in {', '.join(changed)}) and no checkpoint; choose another --run-dir"
            )
    return False


def resume_state(last_ckpt: Path, recipe: RecipeConfig) -> dict:
    """Tokenizer and step of the checkpoint, after checking the recipe still matches it."""
    if not last_ckpt.exists():
        raise KeelError(
            f"--resume: no checkpoint at {last_ckpt}; train without --resume to start this "
            "run (--resume auto does either)"
        )
    ckpt = read_checkpoint(last_ckpt)
    try:
        saved = RecipeConfig(**ckpt["hyper_parameters"]["recipe"])
        step, tokenizer = ckpt["global_step"], tokenizer_from_dict(ckpt[TOKENIZER_KEY])
        weights = ckpt["state_dict"]
    except (KeyError, TypeError, ValueError) as e:
        raise KeelError(
            f"{last_ckpt} is not a keelctl training checkpoint ({first_line(e)}); resume a run "
            "dir that `keelctl train` wrote, or train without --resume"
        ) from None
    check_checkpoint_layout(last_ckpt, saved.trainer.strategy, recipe.trainer.strategy)
    changed = _unresumable_changes(saved, recipe)
    if changed:
        raise KeelError(
            f"--resume: the recipe differs from the checkpoint's in {', '.join(changed)}; "
            f"resume with the recipe in {last_ckpt.parent.parent / CONFIG_YAML} (docs/train.md "
            "lists the keys a resume may change)"
        )
    _check_weights_fit(weights, recipe, last_ckpt)
    if step >= recipe.trainer.max_steps:
        raise KeelError(
            f"--resume: the run already reached step {step} >= trainer.max_steps "
            f"{recipe.trainer.max_steps}; pass a larger --max-steps to train further"
        )
    return {"tokenizer": tokenizer, "global_step": step}


def _unresumable_changes(saved: RecipeConfig, recipe: RecipeConfig) -> list[str]:
    changed = set(_diff(saved.model_dump(mode="json"), recipe.model_dump(mode="json")))
    changed -= RESUMABLE_CHANGES
    global_batch = recipe.sequences_per_step  # None with devices: auto
    if global_batch is not None and global_batch == saved.sequences_per_step:
        changed -= BATCH_LAYOUT
        if "fsdp" not in (saved.trainer.strategy, recipe.trainer.strategy):
            changed.discard("trainer.strategy")
    return sorted(changed)


def _check_weights_fit(weights: dict, recipe: RecipeConfig, path: Path) -> None:
    """The checkpoint's tensors have the names and shapes the recipe's model has."""
    with torch.device("meta"):  # shapes only, no memory
        model = build_model(recipe.model)
    expected = {f"model.{k}": v.shape for k, v in model.state_dict().items()}
    found = {k: v.shape for k, v in weights.items()}
    if found == expected:
        return
    wrong = next((k for k in expected if k in found and found[k] != expected[k]), None)
    if wrong is not None:
        what = f"{wrong} is {list(found[wrong])}, in the recipe's model {list(expected[wrong])}"
    else:
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        what = f"it lacks {missing[0]}" if missing else f"it has {extra[0]}, which the model lacks"
    raise KeelError(
        f"checkpoint {path} holds a different model ({what}); resume with the recipe that "
        "wrote it, or train without --resume into a new run dir"
    )


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was written at."""
    try:
        return int(read_checkpoint(path)["global_step"])
    except (KeyError, TypeError, ValueError) as e:
        raise KeelError(
            f"{path} is not a keelctl training checkpoint ({first_line(e)}); delete it and "
            "train again"
        ) from None


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file (read_checkpoint_file); of a sharded one (a folder, fsdp's last and
    best), the metadata and the weights' shapes."""
    return read_sharded_checkpoint(path) if path.is_dir() else read_checkpoint_file(path)


def _diff(a: dict, b: dict, prefix: str = "") -> Iterator[str]:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            yield f"{prefix}{key}"


class StepLabels(L.Callback):
    """Numbers every logged row (metrics.csv and the trackers) as the optimizer step it trained,
    after any resume. Lightning's loggers number rows by a counter of their own
    (fit_loop.epoch_loop._batches_that_stepped) which a checkpoint holds one short of the step,
    and its restore adds the missing one for some save points only: a run finished at step 20
    and resumed to 40 logged steps 19..38. Set from global_step before each batch (equal
    anyway when nothing was resumed)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


def open_metrics(csv_logger: CSVLogger, run_dir: Path, resume_step: int) -> None:
    """Start RUN/metrics.csv afresh; a run resumed (or rolled back) to `resume_step` keeps the
    rows of the steps before it."""
    previous = Run(run_dir).complete_rows(METRICS_CSV) if resume_step else []
    _ = csv_logger.experiment  # creating the writer removes the old metrics.csv
    for row in previous:
        step = int(row.pop("step"))
        if step < resume_step:
            csv_logger.log_metrics({k: _number(v) for k, v in row.items() if v != ""}, step=step)
    csv_logger.save()


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)
