"""Downstream evaluation inside training: trainer.eval_tasks every trainer.eval_every steps.

The tasks run through the same lm-eval adapter and task lookup as `keelctl eval`
(keelctl/eval/lm_eval_adapter.py, harness.py), on the model being trained, at the end of an
optimizer step (and after the last). Each metric goes to every logger (metrics.csv,
TensorBoard, W&B, MLflow) as eval/TASK/METRIC in the row of that step, beside `tokens` and
eval/seconds, so a resumed run keeps the rows of its earlier evaluations as it keeps its
losses (resume.open_metrics). Task names are checked when the callback is built, before step 1.

Under several processes global rank zero evaluates (the full model: gathered first under fsdp,
a collective every rank joins) while the others wait at a barrier. A task that fails is logged
(a warning and eval/failed = 1) and training goes on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from contextlib import contextmanager, redirect_stderr

import lightning as L
import torch

from keelctl.config import RecipeConfig
from keelctl.train.callbacks import TokenThroughput
from keelctl.train.module import _rng_states, _set_rng_states
from keelctl.train.parallel import gathered_model

log = logging.getLogger(__name__)


def check_eval_tasks(names: list[str]) -> None:
    """A KeelError naming any task lm-eval does not know. Bundled names are known without
    lm-eval (its task index, lm_eval.tasks: 86 MiB and 0.5 CPU-s before the first step,
    issue 29); the first evaluation loads it."""
    from keelctl.eval.task_names import BUNDLED_TAG, BUNDLED_TASKS, HOPS_TAG

    if set(names) <= {*BUNDLED_TASKS, BUNDLED_TAG, HOPS_TAG}:
        return
    from keelctl.eval.harness import resolve_tasks  # eval builds on train's outputs, lazily

    resolve_tasks(names)


def metric_row(results: dict) -> dict[str, float]:
    """lm-eval's results[task]["acc,none"] as {"eval/task/acc": value}; stderr left out,
    a filter other than none kept in the name (eval/task/exact_match_strict-match)."""
    row = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            name, filt = key.split(",", 1)
            row[f"eval/{task}/{name}" + ("" if filt == "none" else f"_{filt}")] = float(value)
    return row


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere
    nothing). After a step glibc keeps the pages of the freed activations, which the
    evaluation's allocations (lm-eval's modules, its data sets) mostly do not reuse: they
    would add about 70 MiB on top of them (issue 29). Costs the next step its page faults."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


@contextmanager
def _training_untouched(model: torch.nn.Module):
    """lm-eval seeds Python, NumPy and torch, and the adapter switches to eval mode: put the
    generators and the mode back, so the run trains as it would without evaluations."""
    states, was_training = _rng_states(), model.training
    try:
        yield
    finally:
        _set_rng_states(states)
        model.train(was_training)


class InTrainingEval(L.Callback):
    """trainer.eval_tasks on the model in training every trainer.eval_every optimizer steps
    and after the last; the scores go to every logger (module docstring)."""

    def __init__(self, recipe: RecipeConfig, throughput: TokenThroughput):
        t = recipe.trainer
        check_eval_tasks(t.eval_tasks)
        self.every, self.tasks, self.limit = t.eval_every, list(t.eval_tasks), t.eval_limit
        self.batch_size, self.context = recipe.data.batch_size, recipe.data.seq_len
        self.throughput = throughput  # knows the tokens per optimizer step once training starts
        self._last_step = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # still accumulating micro-batches
            return
        self._last_step = step
        if step % self.every == 0 or step >= trainer.max_steps:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer, pl_module) -> None:
        _release_free_heap()
        model = gathered_model(trainer, pl_module)  # every rank: a collective under fsdp
        if trainer.is_global_zero:
            row = self._scores(trainer, model, pl_module.tokenizer)
            # Lightning's rows are 0-based (step s holds optimizer step s + 1): keep to them.
            for logger in trainer.loggers:
                logger.log_metrics(row, step=trainer.global_step - 1)
                logger.save()
        trainer.strategy.barrier("in-training eval")

    def _scores(self, trainer, model, tokenizer_dict) -> dict[str, float]:
        from keelctl.data import tokenizer_from_dict
        from keelctl.eval.harness import run_tasks
        from keelctl.eval.lm_eval_adapter import KeelLM

        step = trainer.global_step
        row = {"tokens": float(step * self.throughput.tokens_per_step)}
        started = time.perf_counter()
        try:
            # lm-eval's progress bars would tear the training bar apart: they go to devnull
            # (warnings still reach the log, whose handlers hold the real stderr).
            with (
                _training_untouched(model),
                trainer.precision_plugin.forward_context(),
                open(os.devnull, "w") as devnull,
                redirect_stderr(devnull),
            ):
                lm = KeelLM.from_model(
                    model,
                    tokenizer_from_dict(tokenizer_dict),
                    batch_size=self.batch_size,
                    max_length=self.context,
                )
                results = run_tasks(lm, self.tasks, limit=self.limit)["results"]
            row.update(metric_row(results))
        except Exception as e:  # a broken task must not end a long run: log it, train on
            log.warning(
                "in-training eval at step %d failed (%s: %s); training goes on, the next eval "
                "is at step %d",
                step,
                type(e).__name__,
                " ".join(str(e).split())[:300],
                step + self.every,
            )
            row["eval/failed"] = 1.0
        row["eval/seconds"] = time.perf_counter() - started
        return row
