"""The LightningModule's parts: schedule, weight-decay groups, checkpointing, RNG, precision."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch

from keelctl.config import RecipeConfig
from keelctl.train import train
from keelctl.train.module import LanguageModel, _rng_states, _set_rng_states
from keelctl.train.optim import build_optimizer, build_schedule, decay_groups, warmup_cosine_lr


def test_schedule_warms_up_linearly_then_follows_cosine_to_min_lr():
    kw = dict(lr=1e-2, min_lr=1e-4, warmup_steps=10, max_steps=110)
    lrs = [warmup_cosine_lr(s, **kw) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)  # (step+1)/10 of lr
    assert lrs[60] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + np.cos(np.pi * 50 / 99)))
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert warmup_cosine_lr(0, lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=5) == 1.0


def test_optimizer_follows_the_schedule_and_skips_decay_on_norms_and_embeddings():
    recipe = RecipeConfig(
        model=dict(d_model=32, n_heads=4, n_blocks=2),
        optim=dict(lr=1e-2, min_lr=1e-4, warmup_steps=3, weight_decay=0.1),
        trainer=dict(max_steps=20),
    )
    module = LanguageModel(recipe.model_dump(mode="json"))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [
        warmup_cosine_lr(s, lr=1e-2, min_lr=1e-4, warmup_steps=3, max_steps=20) for s in range(20)
    ]
    assert seen == pytest.approx(expected)

    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "tok_emb.weight" in no_decay_names
    assert all("norm" in n or n == "tok_emb.weight" for n in no_decay_names)
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in module.model.named_parameters() if p.ndim == 2 and n != "tok_emb.weight"
    }


def test_schedule_state_is_the_step_only_and_a_longer_run_stretches_the_cosine():
    optim = RecipeConfig(optim=dict(lr=1e-2, min_lr=1e-4, warmup_steps=3)).optim
    model = torch.nn.Linear(2, 2)
    short = build_optimizer(model, optim)
    schedule = build_schedule(short, optim, max_steps=20)
    for _ in range(20):
        short.step()
        schedule.step()
    assert schedule.state_dict() == {"last_epoch": 20, "_step_count": 21}
    longer = build_optimizer(model, optim)
    stretched = build_schedule(longer, optim, max_steps=40)
    longer.load_state_dict(short.state_dict())  # holds the 20-step schedule's lr
    stretched.load_state_dict(schedule.state_dict())
    seen = []
    for _ in range(20):
        seen.append(longer.param_groups[0]["lr"])
        longer.step()
        stretched.step()
    kw = dict(lr=1e-2, min_lr=1e-4, warmup_steps=3, max_steps=40)
    assert seen == pytest.approx([warmup_cosine_lr(s, **kw) for s in range(20, 40)], rel=1e-12)


def test_resume_with_more_max_steps_follows_the_longer_schedule(tiny_recipe, tmp_path):
    """20 steps, then --resume with max_steps 40: steps 20..39 at a 40-step schedule's LRs."""
    run = tmp_path / "run"
    train(tiny_recipe(max_steps=20), run, progress_bar=False)
    longer = tiny_recipe(max_steps=40)
    train(longer, run, resume=True, progress_bar=False)
    with open(run / "metrics.csv", newline="") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")}
    o = longer.optim
    kw = dict(lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps, max_steps=40)
    assert [lrs[s] for s in range(20, 40)] == pytest.approx(
        [warmup_cosine_lr(s, **kw) for s in range(20, 40)], rel=1e-6
    )
    assert lrs[39] == pytest.approx(o.min_lr) and lrs[20] > 10 * o.min_lr


def test_adamw_is_fused_only_on_cuda_parameters():
    optim = RecipeConfig().optim
    assert not build_optimizer(torch.nn.Linear(2, 2), optim).defaults["fused"]
    if torch.cuda.is_available():
        assert build_optimizer(torch.nn.Linear(2, 2, device="cuda"), optim).defaults["fused"]


def test_tied_head_is_one_parameter_without_decay(tiny_model_config):
    from keelctl.model import build_model

    model = build_model(tiny_model_config.model_copy(update={"tie_embeddings": True}))
    decay, no_decay = decay_groups(model, 0.01)
    assert any(p is model.head.weight for p in no_decay["params"])
    assert not any(p is model.head.weight for p in decay["params"])


def _module(seed: int = 0, **trainer) -> LanguageModel:
    recipe = RecipeConfig(model=dict(d_model=32, n_heads=4, n_blocks=2), trainer=trainer)
    torch.manual_seed(seed)
    return LanguageModel(recipe.model_dump(mode="json"))


def test_activation_checkpointing_gives_the_same_gradients():
    plain, recomputed = _module(), _module(activation_checkpointing=True)
    assert list(plain.state_dict()) == list(recomputed.state_dict())
    x = torch.randint(0, 257, (2, 16))
    for m in (plain, recomputed):
        m.loss(x, x).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_compile_keeps_parameter_names():
    # Checkpoints of compiled and plain runs are interchangeable (no `_orig_mod.` prefix).
    assert list(_module(compile=True).state_dict()) == list(_module().state_dict())


def test_rng_states_round_trip():
    states = _rng_states()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]


def test_bf16_mixed_with_accumulation_trains(tiny_recipe, tmp_path):
    recipe = tiny_recipe(
        "trainer.precision=bf16-mixed",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_every=3",
        max_steps=6,
    )
    summary = train(recipe, tmp_path / "run", progress_bar=False)
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["tokens_seen"] == 6 * 2 * 4 * 32
    assert np.isfinite(summary["final_val_loss"])
    hparams = (tmp_path / "run" / "hparams.yaml").read_text()
    assert "n_sublayers: 4" in hparams and "n_blocks: 2" in hparams
    assert json.loads((tmp_path / "run" / "model.json").read_text())["steps"] == 6
