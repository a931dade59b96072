"""What a training step leaves alive for the next one (issue 29): neither its gradients nor its
autograd graph reach the next step's forward, where they keep the memory the freed activations
leave from being reused (the demo's peak RSS, docs/train.md#memory-and-start-up-of-a-small-run);
gradient accumulation still sums over the micro-batches of a step."""

from __future__ import annotations

import gc

import lightning as L
import torch

from keelctl.train import train


class AliveAtBatchStart(L.Callback):
    """(batch_idx, parameters holding a gradient, tensors carrying an autograd graph) at the
    start of every micro-batch but the first."""

    def __init__(self):
        self.seen: list[tuple[int, int, int]] = []
        self.n_params = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            return
        graphs = sum(
            issubclass(type(o), torch.Tensor) and o.grad_fn is not None for o in gc.get_objects()
        )
        grads = sum(p.grad is not None for p in pl_module.parameters())
        self.n_params = sum(1 for _ in pl_module.parameters())
        self.seen.append((batch_idx, grads, graphs))


def test_no_gradient_or_graph_outlives_its_optimizer_step(tiny_recipe, tmp_path):
    # With TensorBoard the grad-flow figure is drawn (here at every step), as in the demo:
    # matplotlib's reference cycles once kept the step's loss and graph alive past the step.
    recipe = tiny_recipe(
        "trainer.loggers=[csv,tensorboard]", "trainer.grad_flow_every=1", max_steps=3
    )
    probe = AliveAtBatchStart()
    train(recipe, tmp_path / "run", progress_bar=False, callbacks=[probe])
    assert probe.seen == [(1, 0, 0), (2, 0, 0)]


def test_gradients_still_accumulate_over_the_micro_batches_of_a_step(tiny_recipe, tmp_path):
    recipe = tiny_recipe("data.batch_size=2", "trainer.accumulate_grad_batches=2", max_steps=2)
    probe = AliveAtBatchStart()
    train(recipe, tmp_path / "run", progress_bar=False, callbacks=[probe])
    n = probe.n_params
    # Micro-batches 1 and 3 add to the gradients of 0 and 2; micro-batch 2 starts a new step.
    assert [(i, grads) for i, grads, _ in probe.seen] == [(1, n), (2, 0), (3, n)]
