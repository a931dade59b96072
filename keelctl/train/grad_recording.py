"""Gradient flow through depth, recorded during training into RUN/grads.csv.

Per optimizer step and per sub-layer i (the paper's "layers"; block = i // 2):

  param_grad_norm   L2 norm of the gradients of all of sub-layer i's parameters (its norms and
                    its branch), read in `on_before_optimizer_step`: after every micro-batch of
                    the step has been back-propagated and after DDP's all-reduce, before gradient
                    clipping and before the optimizer step (fp16 AMP: after unscaling).
  stream_grad_norm  L2 norm of dLoss/dx_in, the gradient reaching sub-layer i's input on the
                    residual stream. Convention: the step's input is every sequence of the step
                    side by side (all micro-batches, all ranks) and Loss is the loss whose
                    gradient the optimizer sees (Lightning divides each micro-batch loss by
                    accumulate_grad_batches; DDP/FSDP average over ranks). So the norm is
                    sqrt(sum over micro-batches and ranks of |g_k|^2) / world_size, the number a
                    single batch holding every sequence of the step gives, and the same loss the
                    accumulated param grads belong to.

Recording steps: global_step % every_n_steps == 0 (so step 0, at init) and the last step
(max_steps - 1). Other steps pay nothing: the hooks exist only while a recording step runs,
and under torch.compile only recording steps run eagerly.
`step` is trainer.global_step while the step runs, i.e. the number of optimizer updates
already applied to the weights whose gradient is measured.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from torch import nn

from keelctl.errors import KeelError
from keelctl.figures import GradLine, grad_flow_figure
from keelctl.model import ModelConfig
from keelctl.model.grad_theory import theory_gain, theory_label
from keelctl.runs import GRADS_COLUMNS
from keelctl.train.loggers import log_figure, log_tracker_metrics, shows_images
from keelctl.train.parallel import is_sharded, local_grad


class StreamGradProbe:
    """Sums |dLoss/dx_in|^2 per sub-layer over the backward passes run while attached.

    A forward pre-hook puts a tensor hook on each sub-layer's input once per micro-batch: on the
    first call whose input needs grad. Activation checkpointing's recompute during backward is
    therefore not counted twice (non-reentrant), or is the one counted (reentrant)."""

    def __init__(self, sublayers: Sequence[nn.Module]):
        self.sublayers = list(sublayers)
        self._handles: list = []
        self._hooked = [False] * len(self.sublayers)
        self._sq: list[torch.Tensor | None] = [None] * len(self.sublayers)

    def attach(self) -> None:
        if not self._handles:
            self._handles = [
                sub.register_forward_pre_hook(partial(self._on_input, i))
                for i, sub in enumerate(self.sublayers)
            ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start_micro_batch(self) -> None:
        """Call before each forward pass whose backward should be counted."""
        self._hooked = [False] * len(self.sublayers)

    def _on_input(self, i: int, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self._hooked[i] or not x.requires_grad:
            return
        self._hooked[i] = True
        x.register_hook(partial(self._on_grad, i))

    def _on_grad(self, i: int, grad: torch.Tensor) -> None:
        sq = grad.detach().float().square().sum()
        self._sq[i] = sq if self._sq[i] is None else self._sq[i] + sq

    def squared_norms(self, device: torch.device) -> torch.Tensor:
        """(L,) summed squared stream-gradient norms; NaN where no gradient arrived."""
        nan = torch.tensor(math.nan, device=device)
        return torch.stack([nan if sq is None else sq.to(device) for sq in self._sq])


def param_grad_squares(sublayers: Sequence[nn.Module]) -> torch.Tensor:
    """(L,) squared L2 norm of each sub-layer's parameter gradients (0 where none has a grad)."""
    device = next(sublayers[0].parameters()).device
    out = []
    for sub in sublayers:
        sq = torch.zeros((), device=device)
        for p in sub.parameters():
            if p.grad is not None:
                sq = sq + local_grad(p).detach().float().square().sum().to(device)
        out.append(sq)
    return torch.stack(out)


def append_grads_csv(
    path: Path,
    step: int,
    sublayers: Sequence[nn.Module],
    param_grad_norm: Sequence[float],
    stream_grad_norm: Sequence[float],
) -> None:
    """Append one step's rows to grads.csv, writing the header only when the file is new or
    empty (a resumed run appends to the file its first part wrote)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(GRADS_COLUMNS)
        for i, sub in enumerate(sublayers):
            writer.writerow(
                [step, i, i // 2, sub.kind, float(param_grad_norm[i]), float(stream_grad_norm[i])]
            )


def _compile_stance(stance: str) -> None:
    """Recording steps run torch.compile'd models eagerly ("force_eager"): a compiled graph
    ignores module hooks added after it was traced, so no stream gradient would arrive."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if set_stance is not None:
        set_stance(stance)


def show_in_trackers(
    loggers: Sequence[Logger],
    step: int,
    cfg: ModelConfig,
    param_grad_norm: Sequence[float],
    stream_grad_norm: Sequence[float],
) -> None:
    """The step's profile in the trackers (not metrics.csv: grads.csv holds it): the
    plot-grads figure with the theory overlay, and grad_flow/bottom_top (stream gradient at
    sub-layer 0 / at the top) and grad_flow/min_top (lowest over depth / at the top)."""
    stream = np.asarray(stream_grad_norm, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # no gradient at the top: inf/nan
        relative = stream / stream[-1]
    log_tracker_metrics(
        loggers,
        {"grad_flow/bottom_top": float(relative[0]), "grad_flow/min_top": float(relative.min())},
        step,
    )
    if shows_images(loggers):
        line = GradLine(f"step {step}", "run", stream_grad_norm, param_grad_norm)
        figure = grad_flow_figure([line], {theory_label(cfg): theory_gain(cfg)})
        log_figure(loggers, "grad_flow", figure, step)


class GradFlowCallback(Callback):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step), append each
    sub-layer's param_grad_norm and stream_grad_norm to `path` (RUN/grads.csv). Expects the
    LightningModule's Transformer at `pl_module.model`. Only global rank zero writes."""

    def __init__(self, every_n_steps: int, path: Path):
        if every_n_steps < 1:
            raise KeelError(
                f"grad flow every_n_steps must be >= 1, got {every_n_steps}; "
                "use trainer.grad_flow_every: 0 to switch recording off"
            )
        self.every_n_steps, self.path = every_n_steps, Path(path)
        self._probe: StreamGradProbe | None = None
        self._to_show: tuple | None = None  # (step, param, stream) for the trackers

    def _is_recording_step(self, trainer) -> bool:
        step = trainer.global_step
        return step % self.every_n_steps == 0 or step == trainer.max_steps - 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._is_recording_step(trainer):
            return
        if self._probe is None:
            self._probe = StreamGradProbe(pl_module.model.sublayers)
            self._probe.attach()
            _compile_stance("force_eager")
        self._probe.start_micro_batch()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._probe is None:
            return
        probe, self._probe = self._probe, None
        probe.detach()
        _compile_stance("default")
        sublayers = pl_module.model.sublayers
        strategy = trainer.strategy
        param_sq = param_grad_squares(sublayers)
        if is_sharded(strategy):  # each rank holds a disjoint shard of the grads
            param_sq = strategy.reduce(param_sq, reduce_op="sum")
        stream_sq = strategy.reduce(probe.squared_norms(param_sq.device), reduce_op="sum")
        stream_sq = stream_sq / trainer.world_size**2
        if trainer.is_global_zero:
            param, stream = param_sq.sqrt().tolist(), stream_sq.sqrt().tolist()
            append_grads_csv(self.path, trainer.global_step, sublayers, param, stream)
            self._to_show = (trainer.global_step, param, stream)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """The figure is drawn here, not inside the optimizer step: matplotlib leaves reference
        cycles holding the frames it ran under, and under the step those frames hold the step's
        loss and autograd graph until a full garbage collection; alive through the next
        forward, the graph keeps the freed activations' memory from being reused (40-50 MiB
        more peak RSS in the demo, issue 29)."""
        if self._to_show is not None:
            step, param, stream = self._to_show
            self._to_show = None
            show_in_trackers(trainer.loggers, step, pl_module.model.config, param, stream)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._probe is not None:  # stopped inside a recording step
            self._probe.detach()
            self._probe = None
            _compile_stance("default")
