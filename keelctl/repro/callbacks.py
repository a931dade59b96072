"""The Lightning callback max-lr and scale-map pass to train(): an early stop once the divergence
detector's verdict on a run can no longer change."""

from __future__ import annotations

import math

import lightning as L

from keelctl.repro.divergence import DivergenceRules, detect_divergence


class StopWhenDiverged(L.Callback):
    """Stops training once detect_divergence without a reference curve (so only the nan and
    spike rules, which no other run can overturn) has found a divergence that later points
    cannot move: a spike streak starting earlier would have fired within spike_steps + 1
    points. The post-hoc analysis reads the same losses and adds the reference rules (plateau,
    slow), which can only move the divergence earlier, so stopping changes nothing but the
    time spent. Checks every `every` steps (the detector is O(steps x window))."""

    def __init__(self, rules: DivergenceRules, total_steps: int, every: int = 10):
        self.rules, self.total_steps, self.every = rules, total_steps, every
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps.append(trainer.global_step - 1)
        self.losses.append(float(loss.detach()) if loss is not None else math.nan)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        if len(self.steps) % self.every:
            return
        found = detect_divergence(
            self.steps, self.losses, self.lrs, self.rules, total_steps=self.total_steps
        )
        if found is None:
            return
        if len(self.steps) - 1 - self.steps.index(found.step) >= self.rules.spike_steps + 1:
            trainer.should_stop = True
