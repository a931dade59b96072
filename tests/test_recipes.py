"""Every shipped recipe loads and validates, and says what it claims to be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from keelctl.config import load_recipe
from keelctl.model import build_model, count_parameters

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {
        "tiny-keel",
        "tiny-pre-ln",
        "tiny-post-ln",
        "tiny-deepnorm",
        "keel-1024-sublayers-cpu",
    } <= names
    for scheme in ("keel", "pre-ln"):
        assert {f"{scheme}-{n}-sublayers" for n in (64, 128, 512, 1024)} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem  # the default run dir is runs/<file name>
    if match := re.search(r"-(\d+)-sublayers", path.stem):
        assert recipe.model.n_sublayers == int(match.group(1))
    if claim := re.search(r"([\d.]+)([MB]) parameters", recipe.description):
        with torch.device("meta"):  # shapes only, no memory: 6.5B parameters build in seconds
            n_params = count_parameters(build_model(recipe.model))
        stated = float(claim.group(1)) * {"M": 1e6, "B": 1e9}[claim.group(2)]
        assert abs(n_params - stated) / stated < 0.05, n_params


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_key_is_commented(path):
    for line in path.read_text().splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):  # a key with a value inside a section
            assert "#" in line, line


@pytest.mark.parametrize(
    "path",
    [p for p in RECIPES if re.fullmatch(r"(keel|pre-ln)-\d+-sublayers", p.stem)],
    ids=lambda p: p.stem,
)
def test_paper_scale_recipes_follow_the_paper(path):
    r = load_recipe(path)
    assert r.sequences_per_step * r.data.seq_len == 1024 * 4096  # tokens per optimizer step
    assert (r.model.d_model, r.model.hidden, r.model.n_heads, r.model.kv_heads) == (
        1024,
        3072,
        16,
        8,
    )
    assert r.model.rope_theta == 1e4 and r.optim.betas == (0.9, 0.95)
    assert (r.optim.weight_decay, r.optim.grad_clip, r.optim.warmup_steps) == (0.01, 1.0, 2500)
    assert r.optim.min_lr == 1e-7 and r.trainer.precision == "bf16-mixed"
    assert r.optim.lr == {"keel": 4.5e-3, "pre_ln": 3e-3}[r.model.residual]
