"""Fixtures for tests/scale (helpers: scale_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny(tiny_train_sets, tmp_path):
    """make(*extra, max_steps) -> `key=value` overrides of a tiny tiny-keel run on CPU."""

    def make(*extra: str, max_steps: int = 20) -> list[str]:
        base = tiny_train_sets(tmp_path / "cache", max_steps)
        return [*base, "trainer.accelerator=cpu", *extra]

    return make
