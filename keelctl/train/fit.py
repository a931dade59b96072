"""train(recipe, run_dir): one training run from a validated recipe to a finished run dir.

The run dir layout is documented once, in docs/runs.md (names from keelctl.runs). Rank zero
writes config.yaml, model.safetensors/model.json and summary.json; Lightning writes
metrics.csv and checkpoints/.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback

from keelctl.atomic import remove_partial_writes
from keelctl.config import RecipeConfig
from keelctl.data import PreparedData, prepare_data_section
from keelctl.errors import KeelError
from keelctl.model import count_parameters
from keelctl.runs import CHECKPOINTS, GRADS_CSV, Run
from keelctl.train.callbacks import GradNorm, TokenThroughput, TrainProgressBar, ValidateAtEnd
from keelctl.train.checkpoint_io import remove_stale_shards
from keelctl.train.checkpoints import LAST_CKPT, checkpoint_callbacks
from keelctl.train.datamodule import TokenDataModule
from keelctl.train.evaluation import InTrainingEval
from keelctl.train.grad_recording import GradFlowCallback
from keelctl.train.guards import LossGuard, LossSpike, TrainingDiverged
from keelctl.train.loggers import close_trackers, make_loggers, start_trackers
from keelctl.train.module import LanguageModel
from keelctl.train.parallel import gathered_model
from keelctl.train.preemption import (
    RunPreempted,
    requeue_slurm_job,
    stop_signals_held,
)
from keelctl.train.resume import (
    StepLabels,
    check_run_dir,
    checkpoint_step,
    open_metrics,
    resolve_resume,
    resume_state,
)
from keelctl.train.trainer import build_trainer, expected_warnings_hidden

log = logging.getLogger(__name__)

DEPTH_UNITS = (
    "n_sublayers counts attention+FFN sub-layers (the paper's layers); n_blocks = n_sublayers / 2"
)


def default_run_dir(recipe: RecipeConfig) -> Path:
    return Path("runs") / recipe.name


def train(
    recipe: RecipeConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool | str = False,
    progress_bar: bool = True,
    callbacks: Sequence[Callback] = (),
) -> dict:
    """Train `recipe` into `run_dir` (default runs/<name>) and return the summary dict
    (also written to RUN/summary.json). resume=True continues from RUN/checkpoints/last.ckpt
    with its weights, optimizer, scheduler, RNG and data position; resume="auto" does so when
    that checkpoint exists and starts the run otherwise. A stop signal (preemption.py) ends the
    run after the current step with a checkpoint: summary status "preempted". Extra Lightning
    callbacks (e.g. a test's early stop) run after the built-in ones. Under a multi-process
    launch every process calls this; rank zero writes the run dir."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    last_ckpt = run_dir / CHECKPOINTS / LAST_CKPT
    is_rank_zero = rank_zero_only.rank == 0
    may_start_over = resume == "auto"  # a run killed before its first checkpoint
    resume = resolve_resume(run_dir, recipe, resume)
    resumed = resume_state(last_ckpt, recipe) if resume else None
    created = not run_dir.exists()
    if is_rank_zero:
        check_run_dir(run_dir, resume or may_start_over)
    torch.set_flush_denormal(True)  # CPU ops: vanishing gradients' subnormals cost ~8x
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls in fp32 runs
    fit = _Fit(recipe, run_dir, resumed, progress_bar, callbacks)
    ckpt_path = last_ckpt if resume else None
    started = time.perf_counter()
    with expected_warnings_hidden():
        try:
            fit.data = fit.prepare() if is_rank_zero else None  # the others: in setup()
            trainer, module, datamodule = fit.setup()
        except KeelError:
            if created and is_rank_zero and not any(run_dir.iterdir()):
                run_dir.rmdir()  # leave no empty run dir behind a mistake
            raise
        try:
            while True:
                try:
                    trainer.fit(
                        module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True
                    )
                    break
                except LossSpike as spike:
                    fit.start_step = spike.event["resumed_from_step"] = checkpoint_step(last_ckpt)
                    _warn_rollback(spike.event, fit.guard)
                    ckpt_path, fit.data = last_ckpt, datamodule.data  # read the corpus once
                    trainer, module, datamodule = fit.setup()
                except TrainingDiverged as e:
                    fit.status = "diverged"
                    raise fit.diverged(e, trainer, module, started) from None
                except RunPreempted as stop:
                    fit.status = "preempted"
                    return fit.preempted(stop, trainer, module, started)
            fit.status = "finished"
        finally:
            close_trackers(trainer.loggers, fit.status)

    summary = fit.summary(trainer, module, started)
    with stop_signals_held():  # the run is done: a stop signal now waits for the export
        model = gathered_model(trainer, module)  # every rank: a collective under fsdp
        if trainer.is_global_zero:
            Run(run_dir).save_model(
                model,
                fit.data.tokenizer,
                steps=trainer.global_step,
                tokens_seen=summary["tokens_seen"],
                recipe=recipe.name,
            )
            Run(run_dir).write_summary(summary)
    return summary


@rank_zero_only
def _warn_rollback(event: dict, guard: LossGuard) -> None:
    log.warning(
        "loss spike %.4g at step %d (mean of the previous %d losses %.4g): rolled back to the "
        "checkpoint of step %d, learning rate x %g from now on (rollback %d of at most %d)",
        event["loss"],
        event["step"],
        guard.cfg.window,
        event["running_mean"],
        event["resumed_from_step"],
        event["lr_scale"],
        len(guard.rollbacks),
        guard.cfg.max_rollbacks,
    )


class _Fit:
    """What the fits of one train() call share: a resume or each rollback starts a new
    Trainer (and module) from the last checkpoint, as --resume does."""

    def __init__(self, recipe, run_dir, resumed, progress_bar, callbacks):
        self.recipe, self.run_dir = recipe, run_dir
        self.tokenizer = resumed["tokenizer"] if resumed else None
        self.start_step = self.resumed_from = resumed["global_step"] if resumed else 0
        self.progress_bar, self.callbacks = progress_bar, callbacks
        self.guard = LossGuard(
            recipe.trainer.spike_rollback, recipe.optim.lr, run_dir / CHECKPOINTS / LAST_CKPT
        )
        self.throughput = TokenThroughput(recipe.data.batch_size * recipe.data.seq_len)
        self.data: PreparedData | None = None
        self.status = "failed"  # for the trackers, until the fit ends otherwise

    def prepare(self) -> PreparedData:
        return _prepare_data(self.recipe, self.tokenizer)

    def setup(self) -> tuple[L.Trainer, LanguageModel, TokenDataModule]:
        recipe, run_dir, is_rank_zero = self.recipe, self.run_dir, rank_zero_only.rank == 0
        L.seed_everything(recipe.seed, workers=True, verbose=False)
        tokenizer = self.data.tokenizer if self.data else self.tokenizer
        # Only rank zero writes checkpoints (the tokenizer goes in them); the others may not
        # know the tokenizer of a new run until their datamodule's setup().
        module = LanguageModel(recipe.model_dump(mode="json"), tokenizer and tokenizer.to_dict())
        datamodule = TokenDataModule(
            self.prepare,
            recipe.data,
            seed=recipe.seed,
            max_steps=recipe.trainer.max_steps,
            data=self.data,
        )
        loggers = (
            make_loggers(recipe.trainer.loggers, run_dir, recipe.name, self.start_step > 0)
            if is_rank_zero
            else False
        )
        trainer = build_trainer(
            recipe,
            [*_callbacks(recipe, run_dir, self), *self.callbacks],
            run_dir=run_dir,
            loggers=loggers,
            progress_bar=self.progress_bar,
        )
        if is_rank_zero:  # after the trainer: a hardware mistake leaves the run dir untouched
            Run(run_dir).write_recipe(recipe)
            open_metrics(loggers[0], run_dir, self.start_step)
            start_trackers(loggers, run_dir)
            Run(run_dir).truncate_csv(GRADS_CSV, keep_steps_below=self.start_step)
            remove_partial_writes(run_dir / CHECKPOINTS)
            remove_stale_shards(run_dir / CHECKPOINTS)
            self._log_rollbacks(trainer)
        for logger in trainer.loggers:
            logger.log_hyperparams(_depth(module))
        return trainer, module, datamodule

    def _log_rollbacks(self, trainer: L.Trainer) -> None:
        """Rows rollback = 1 in metrics.csv at the spiking steps since the restored checkpoint
        (open_metrics dropped the rows of the steps that run again)."""
        for event in self.guard.rollbacks:
            if event["step"] >= self.start_step:
                row = {"rollback": 1.0, "spike_loss": event["loss"], "lr_scale": event["lr_scale"]}
                for logger in trainer.loggers:
                    logger.log_metrics(row, step=event["step"])

    def summary(self, trainer, module, started) -> dict:
        return _summary(
            self.recipe,
            self.run_dir,
            trainer,
            module,
            self.throughput,
            started,
            self.resumed_from,
            self.guard.rollbacks,
        )

    def preempted(self, stop: RunPreempted, trainer, module, started) -> dict:
        """Write summary.json (status preempted), requeue a SLURM job warned of its time
        limit, and return the summary; last.ckpt already holds the step."""
        summary = self.summary(trainer, module, started)
        summary.update(status="preempted", signal=signal.Signals(stop.signum).name)
        if trainer.is_global_zero:
            Run(self.run_dir).write_summary(summary)
            requeue_slurm_job(stop.signum)
        return summary

    def diverged(self, e: TrainingDiverged, trainer, module, started) -> KeelError:
        """Write summary.json (status diverged) and return the error to raise."""
        summary = self.summary(trainer, module, started)
        summary.update(status="diverged", diverged_at_step=e.step, diverged_loss=str(e.loss))
        if trainer.is_global_zero:
            Run(self.run_dir).write_summary(summary)
        return KeelError(_diverged_message(e, self.run_dir / CHECKPOINTS / LAST_CKPT, self.recipe))


def _prepare_data(recipe: RecipeConfig, tokenizer) -> PreparedData:
    data = prepare_data_section(recipe.data, tokenizer, max_vocab_size=recipe.model.vocab_size)
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


def _callbacks(recipe, run_dir, fit: _Fit) -> list[Callback]:
    t = recipe.trainer
    callbacks = [
        *checkpoint_callbacks(t, run_dir / CHECKPOINTS),  # the stop-signal check first
        fit.guard,
        fit.throughput,
        GradNorm(),
        ValidateAtEnd(),
        StepLabels(),
    ]
    if t.grad_flow_every > 0:
        callbacks.append(GradFlowCallback(t.grad_flow_every, run_dir / GRADS_CSV))
    if t.eval_every is not None:
        callbacks.append(InTrainingEval(recipe, fit.throughput))
    if fit.progress_bar:
        callbacks.append(TrainProgressBar())
    return callbacks


def _summary(
    recipe, run_dir, trainer, module, throughput, started, resumed_from, rollbacks
) -> dict:
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
        "resumed_from_step": resumed_from or None,
        "world_size": trainer.world_size,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": step * tokens_per_step,
        "final_val_loss": val_loss,
        "final_val_ppl": float(torch.exp(torch.tensor(val_loss))) if val_loss is not None else None,
        "best_val_loss": float(best.best_model_score)
        if best and best.best_model_score is not None
        else None,
        "rollbacks": [{k: _json_number(v) for k, v in r.items()} for r in rollbacks],
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


def _json_number(v):
    """NaN and Inf as strings ("nan"), as JSON has no such numbers."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _diverged_message(e: TrainingDiverged, last_ckpt: Path, recipe: RecipeConfig) -> str:
    kept = (
        f"the last good checkpoint is {last_ckpt}"
        if last_ckpt.exists()
        else "no checkpoint was written before it"
    )
    todo = "lower optim.lr or raise optim.warmup_steps and train again"
    if not recipe.trainer.spike_rollback.enabled:
        todo += ", or set trainer.spike_rollback.enabled=true"
    return f"{e}; {kept}; {todo}"
