"""Fixtures for the training tests: tiny versions of recipes/tiny-keel.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_KEEL = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"


@pytest.fixture
def tiny_sets(tiny_train_sets, tmp_path):
    """make(*extra, max_steps) -> "key=value" overrides for a tiny tiny-keel run."""

    def make(*extra: str, max_steps: int = 30) -> list[str]:
        return [*tiny_train_sets(tmp_path / "cache", max_steps), *extra]

    return make


@pytest.fixture
def cpu_tiny_sets(tiny_sets):
    """make(*extra, max_steps) -> tiny_sets on CPU whatever the machine has, 20 steps by default:
    for the scaling and fault-tolerance tests (gloo processes, kills, resumes)."""

    def make(*extra: str, max_steps: int = 20) -> list[str]:
        return tiny_sets("trainer.accelerator=cpu", *extra, max_steps=max_steps)

    return make


@pytest.fixture
def tiny_args(tiny_sets):
    """make(*extra, max_steps) -> CLI arguments after `train`: the recipe and its --set pairs."""

    def make(*extra: str, max_steps: int = 30) -> list[str]:
        pairs = [arg for s in tiny_sets(*extra, max_steps=max_steps) for arg in ("--set", s)]
        return [str(TINY_KEEL), *pairs]

    return make


@pytest.fixture
def tiny_recipe(tiny_sets):
    """make(*extra, max_steps) -> the tiny tiny-keel RecipeConfig."""
    from keelctl.config import load_recipe

    def make(*extra: str, max_steps: int = 30):
        return load_recipe(TINY_KEEL, tiny_sets(*extra, max_steps=max_steps))

    return make
