"""The Lightning Trainer for a recipe, and the Lightning warnings it is run under, shared by
`keelctl train` (train/fit.py) and `keelctl bench` (bench/lightning_path.py).

    with expected_warnings_hidden():
        trainer = build_trainer(recipe, callbacks, run_dir=run_dir, loggers=loggers)

With run_dir, the Trainer of a training run (checkpoints, validation, loggers); without, a bare
one that only fits (what bench times): no checkpoints, no validation.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from keelctl.config import RecipeConfig
from keelctl.errors import KeelError
from keelctl.train.checkpoint_io import AtomicCheckpointIO
from keelctl.train.parallel import make_strategy
from keelctl.train.preemption import cluster_plugins

# Lightning warnings that do not apply here, each for the reason given.
EXPECTED_WARNINGS = (
    "Experiment logs directory",  # a resumed run's earlier metrics rows are re-logged (resume.py)
    "Checkpoint directory",  # last.ckpt is meant to be overwritten
    "You're resuming from a checkpoint that ended before the epoch ended",  # datamodule.py
    "does not have many workers",  # windows are cheap memmap slices; data.num_workers sets it
    "is smaller than the logging interval",  # tiny runs
    "You defined a `validation_step` but have no `val_dataloader`",  # bench validates nothing
    "isinstance(treespec, LeafSpec)",  # Lightning 2.6 calling a torch API deprecated in 2.13
)
# Lightning's start-up notes ("GPU available: ..."), which bench hides.
_NOTE_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextmanager
def expected_warnings_hidden(*, hide_notes: bool = False) -> Iterator[None]:
    """Hide EXPECTED_WARNINGS inside the block, and with hide_notes Lightning's start-up notes."""
    levels = {name: logging.getLogger(name).level for name in _NOTE_LOGGERS}
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(message)}")
        if hide_notes:
            for name in _NOTE_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def build_trainer(
    recipe: RecipeConfig,
    callbacks: Sequence[Callback],
    *,
    run_dir: Path | None = None,
    loggers: list[Logger] | bool = False,
    progress_bar: bool = False,
) -> L.Trainer:
    """The Trainer of recipe.trainer and recipe.optim.grad_clip: for a training run into
    run_dir, or (run_dir None) a bare one. A hardware setting Lightning cannot honour here is
    one KeelError naming the keys to change."""
    t = recipe.trainer
    if run_dir is None:
        run = dict(limit_val_batches=0, enable_checkpointing=False)
    else:
        run = dict(
            default_root_dir=run_dir,
            plugins=[AtomicCheckpointIO(), *cluster_plugins()],
            val_check_interval=t.val_every * t.accumulate_grad_batches,  # counted in batches
            check_val_every_n_epoch=None,
            use_distributed_sampler=False,  # datamodule.py deals samples out to ranks in order
            log_every_n_steps=t.log_every,
        )
    try:
        return L.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=make_strategy(t),
            precision=t.precision,
            max_steps=t.max_steps,
            max_epochs=-1,
            accumulate_grad_batches=t.accumulate_grad_batches,
            gradient_clip_val=recipe.optim.grad_clip,
            num_sanity_val_steps=0,
            logger=loggers,
            callbacks=list(callbacks),
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            **run,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise KeelError(
            f"Lightning cannot run trainer.accelerator {t.accelerator}, devices {t.devices}, "
            f"num_nodes {t.num_nodes}, strategy {t.strategy} here: "
            f"{str(e).splitlines()[0]}; change those keys (docs/scale.md)"
        ) from None
