"""Every shipped recipe loads and validates, says what it claims to be, and is a short delta
over one of the few bases in recipes/base/ (the base mechanics: tests/test_config_bases.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from keelctl.config import dump_recipe, load_recipe
from keelctl.model import build_model, count_parameters

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
BASES = sorted((RECIPE_DIR / "base").glob("*.yaml"))
STANDALONE = {"demo-64-sublayers"}  # make demo's recipe reads whole, on purpose


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


@pytest.mark.parametrize("path", RECIPES + BASES, ids=lambda p: p.stem)
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


@pytest.mark.parametrize("path", RECIPES + BASES, ids=lambda p: p.stem)
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


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_a_short_delta_written_whole(path, tmp_path):
    """A shipped recipe names its base and sets few keys; the run dir gets it resolved whole."""
    text = path.read_text()
    if path.stem not in STANDALONE:
        assert re.search(r"^base: \S+\.yaml", text, re.M), "a shipped recipe extends a base"
        keys = re.findall(r"^\s*\w+:\s*\S", text, re.M)  # keys with a value (not sections)
        assert len(keys) <= 12, f"{len(keys)} keys: move what recipes share into a base"
    recipe = load_recipe(path)
    written = dump_recipe(recipe)
    assert not re.search(r"^base:", written, re.M)
    (tmp_path / "config.yaml").write_text(written)
    assert load_recipe(tmp_path / "config.yaml") == recipe  # nothing lost: it stands alone


def _resolved(name: str) -> dict:
    return load_recipe(RECIPE_DIR / f"{name}.yaml").model_dump()


def _differing_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in a:
        if isinstance(a[key], dict):
            keys |= _differing_keys(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b[key]:
            keys.add(prefix + key)
    return keys


TWINS = [  # (recipe, its twin, the keys that differ besides name and description)
    *[
        (f"keel-{n}-sublayers", f"pre-ln-{n}-sublayers", {"model.residual", "optim.lr"})
        for n in (64, 128, 512, 1024)
    ],
    ("tiny-keel", "tiny-pre-ln", {"model.residual"}),  # the equal-LR pair
    ("tiny-post-ln", "tiny-deepnorm", {"model.residual"}),
]


@pytest.mark.parametrize("first, twin, differ", TWINS, ids=[f"{a}-vs-{b}" for a, b, _ in TWINS])
def test_twins_differ_only_in_the_scheme(first, twin, differ):
    """A comparison is fair only if the twins share everything else (model size, data, batch,
    schedule), which the bases now guarantee."""
    keys = _differing_keys(_resolved(first), _resolved(twin))
    assert keys == differ | {"name", "description"}
