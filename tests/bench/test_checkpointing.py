"""apply_activation_checkpointing: same numbers, same names, idempotent, no-op without grad."""

from __future__ import annotations

import torch

from keelctl.model import Block, build_model
from keelctl.model.checkpointing import apply_activation_checkpointing, is_checkpointed


def test_checkpointed_model_gives_the_same_loss_and_gradients(tiny_model_config):
    torch.manual_seed(0)
    plain = build_model(tiny_model_config.model_copy(update={"residual": "keel"}))
    wrapped = build_model(plain.config)
    wrapped.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(wrapped)
    assert all(is_checkpointed(b) for b in wrapped.blocks)
    assert wrapped.state_dict().keys() == plain.state_dict().keys()
    idx = torch.randint(0, 257, (2, 16))
    for model in (plain, wrapped):
        model(idx).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_applying_twice_wraps_once_and_skipping_still_works(tiny_model_config):
    model = apply_activation_checkpointing(build_model(tiny_model_config))
    apply_activation_checkpointing(model)
    inner = model.blocks[0].forward.args[0]  # what the checkpoint calls: Block.forward itself
    assert inner.__func__ is Block.forward
    idx = torch.randint(0, 257, (1, 8))
    with torch.no_grad():
        out = model(idx, skip=[1])
    assert out.shape == (1, 8, 257)


def test_eval_without_grad_matches(tiny_model_config):
    model = build_model(tiny_model_config)
    idx = torch.randint(0, 257, (1, 8))
    with torch.no_grad():
        before = model(idx)
        apply_activation_checkpointing(model)
        torch.testing.assert_close(model(idx), before)
