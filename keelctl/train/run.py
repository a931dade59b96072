"""train(recipe, run_dir): one training run from a validated recipe to a finished run dir.

The run dir layout is documented once, in docs/runs.md (names from keelctl.runs). Rank zero
writes config.yaml, model.safetensors/model.json and summary.json; Lightning writes
metrics.csv and checkpoints/.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from keelctl.config import RecipeConfig, dump_recipe
from keelctl.data import PreparedData, prepare_tokens
from keelctl.errors import KeelError
from keelctl.model import Block, count_parameters
from keelctl.runs import (
    CHECKPOINTS,
    CONFIG_YAML,
    GRADS_CSV,
    SUMMARY_JSON,
    atomic_write_json,
    atomic_write_text,
    save_model,
)
from keelctl.train.callbacks import (
    DivergenceGuard,
    TokenThroughput,
    TrainingDiverged,
    TrainProgressBar,
    ValidateAtEnd,
)
from keelctl.train.datamodule import TokenDataModule
from keelctl.train.grad_flow import GradFlowCallback
from keelctl.train.module import LanguageModel
from keelctl.train.run_dir import check_run_dir, make_loggers, resume_state, truncate_csv

LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
DEPTH_UNITS = (
    "n_sublayers counts attention+FFN sub-layers (the paper's layers); n_blocks = n_sublayers / 2"
)
# Lightning warnings that do not apply here, each for the reason given.
_EXPECTED_WARNINGS = (
    "Experiment logs directory",  # a resumed run's earlier metrics rows are re-logged (run_dir.py)
    "Checkpoint directory",  # last.ckpt is meant to be overwritten
    "You're resuming from a checkpoint that ended before the epoch ended",  # datamodule.py
    "does not have many workers",  # windows are cheap memmap slices; data.num_workers sets it
    "is smaller than the logging interval",  # tiny runs
    "isinstance(treespec, LeafSpec)",  # Lightning 2.6 calling a torch API deprecated in 2.13
)


def default_run_dir(recipe: RecipeConfig) -> Path:
    return Path("runs") / recipe.name


def train(
    recipe: RecipeConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress_bar: bool = True,
    callbacks: Sequence[Callback] = (),
) -> dict:
    """Train `recipe` into `run_dir` (default runs/<name>) and return the summary dict
    (also written to RUN/summary.json). resume=True continues from RUN/checkpoints/last.ckpt
    with its weights, optimizer, scheduler, RNG and data position. Extra Lightning callbacks
    (e.g. a test's early stop) run after the built-in ones."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    last_ckpt = run_dir / CHECKPOINTS / LAST_CKPT
    is_rank_zero = rank_zero_only.rank == 0
    resumed = resume_state(last_ckpt, recipe) if resume else None
    created = not run_dir.exists()
    if is_rank_zero:
        check_run_dir(run_dir, resume)
    torch.set_flush_denormal(True)  # CPU ops: vanishing gradients' subnormals cost ~8x
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls in fp32 runs
    try:
        data = _prepare_data(recipe, resumed["tokenizer"] if resumed else None)
    except KeelError:
        if created and is_rank_zero:
            run_dir.rmdir()  # leave no empty run dir behind a corpus mistake
        raise

    L.seed_everything(recipe.seed, workers=True, verbose=False)
    module = LanguageModel(recipe.model_dump(mode="json"), data.tokenizer.to_dict())
    datamodule = TokenDataModule(
        data, recipe.data, seed=recipe.seed, max_steps=recipe.trainer.max_steps
    )
    resume_step = resumed["global_step"] if resumed else 0
    with _expected_warnings_hidden():
        loggers = make_loggers(run_dir, resume_step) if is_rank_zero else False
        if is_rank_zero:
            atomic_write_text(run_dir / CONFIG_YAML, dump_recipe(recipe))
            if resumed:
                truncate_csv(run_dir / GRADS_CSV, keep_steps_below=resume_step)
        throughput = TokenThroughput(recipe.data.batch_size * recipe.data.seq_len)
        trainer = _trainer(recipe, run_dir, loggers, throughput, progress_bar, callbacks)
        for logger in trainer.loggers:
            logger.log_hyperparams(_depth(module))
        started = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=last_ckpt if resume else None)
        except TrainingDiverged as e:
            summary = _summary(recipe, run_dir, trainer, module, throughput, started, resume_step)
            summary.update(status="diverged", diverged_at_step=e.step, diverged_loss=str(e.loss))
            if trainer.is_global_zero:
                atomic_write_json(run_dir / SUMMARY_JSON, summary)
            raise KeelError(_diverged_message(e, last_ckpt)) from None

    summary = _summary(recipe, run_dir, trainer, module, throughput, started, resume_step)
    if trainer.is_global_zero:
        save_model(
            run_dir,
            module.model,
            data.tokenizer,
            steps=trainer.global_step,
            tokens_seen=summary["tokens_seen"],
            recipe=recipe.name,
        )
        atomic_write_json(run_dir / SUMMARY_JSON, summary)
    return summary


def _prepare_data(recipe: RecipeConfig, tokenizer) -> PreparedData:
    d = recipe.data
    data = prepare_tokens(
        d.corpus,
        d.tokenizer,
        vocab_size=d.vocab_size,
        val_fraction=d.val_fraction,
        text_field=d.text_field,
        hf_split=d.split,
        max_bytes=d.max_bytes,
        cache_dir=d.cache_dir,
        tokenizer=tokenizer,
    )
    if data.tokenizer.vocab_size > recipe.model.vocab_size:
        raise KeelError(
            f"the tokenizer has {data.tokenizer.vocab_size} ids but model.vocab_size is "
            f"{recipe.model.vocab_size}; raise model.vocab_size"
        )
    return data


def _depth(module: LanguageModel) -> dict:
    cfg = module.model.config
    return {
        "n_blocks": cfg.n_blocks,
        "n_sublayers": cfg.n_sublayers,
        "depth_units": DEPTH_UNITS,
        "n_params": count_parameters(module.model),
    }


def _strategy(recipe: RecipeConfig):
    t = recipe.trainer
    if t.strategy != "fsdp":
        return t.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if t.activation_checkpointing else None,
    )


def _trainer(recipe, run_dir, loggers, throughput, progress_bar, extra_callbacks) -> L.Trainer:
    t, o = recipe.trainer, recipe.optim
    ckpt_dir = run_dir / CHECKPOINTS
    callbacks = [
        DivergenceGuard(),
        throughput,
        ValidateAtEnd(),
        # Both save after each validation (val_every steps), best first so last.ckpt
        # carries the updated best score.
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=BEST_CKPT.removesuffix(".ckpt"),
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            enable_version_counter=False,
        ),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=LAST_CKPT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
    ]
    if t.grad_flow_every > 0:
        callbacks.append(GradFlowCallback(t.grad_flow_every, run_dir / GRADS_CSV))
    if progress_bar:
        callbacks.append(TrainProgressBar())
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(recipe),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=o.grad_clip,
        val_check_interval=t.val_every * t.accumulate_grad_batches,  # counted in batches
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=loggers,
        callbacks=[*callbacks, *extra_callbacks],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )


def _summary(recipe, run_dir, trainer, module, throughput, started, resume_step) -> dict:
    metrics = trainer.callback_metrics
    val_loss = float(metrics["val_loss"]) if "val_loss" in metrics else None
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == "val_loss"), None)
    tokens_per_step = throughput.tokens_per_step
    step = trainer.global_step
    return {
        "status": "finished" if step >= recipe.trainer.max_steps else "stopped",
        "name": recipe.name,
        "run_dir": str(run_dir),
        "residual": recipe.model.residual,
        **_depth(module),
        "steps": step,
        "max_steps": recipe.trainer.max_steps,
        "resumed_from_step": resume_step or None,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": step * tokens_per_step,
        "final_val_loss": val_loss,
        "final_val_ppl": float(torch.exp(torch.tensor(val_loss))) if val_loss is not None else None,
        "best_val_loss": float(best.best_model_score)
        if best and best.best_model_score is not None
        else None,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_tokens_per_s": round(throughput.mean_tokens_per_s, 1),
        "units": {
            "loss": "mean cross-entropy in nats per token",
            "tokens": "tokenizer ids; tokens_per_step = "
            "devices x nodes x batch_size x accumulation x seq_len",
            "wall_time_s": "seconds of this invocation (a resumed run counts its own part)",
            "depth": DEPTH_UNITS,
        },
    }


def _diverged_message(e: TrainingDiverged, last_ckpt: Path) -> str:
    kept = (
        f"the last good checkpoint is {last_ckpt}"
        if last_ckpt.is_file()
        else "no checkpoint was written before it"
    )
    return (
        f"training diverged: loss {e.loss} at step {e.step} (lr {e.lr:.3g}); {kept}; "
        "lower optim.lr or raise optim.warmup_steps and train again"
    )


@contextmanager
def _expected_warnings_hidden() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(message)}")
        yield
