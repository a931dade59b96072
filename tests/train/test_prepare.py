"""prepare_model: the one model preparation of train's LanguageModel and bench's bare loop."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

from keelctl.bench.throughput import time_bare
from keelctl.config import RecipeConfig
from keelctl.errors import KeelError
from keelctl.model import build_model
from keelctl.model.checkpointing import is_checkpointed
from keelctl.train.module import LanguageModel
from keelctl.train.prepare import prepare_model

MODEL = dict(d_model=32, n_heads=4, n_blocks=2)


def test_checkpointing_goes_inside_the_compiled_block_and_names_stay():
    recipe = RecipeConfig(model=MODEL, trainer=dict(activation_checkpointing=True, compile=True))
    model = build_model(recipe.model)
    names = list(model.state_dict())
    prepare_model(model, recipe.trainer)
    assert list(model.state_dict()) == names
    for block in model.blocks:
        # compile wraps the checkpointed forward (torchtitan's order), not the other way round
        assert hasattr(block.forward, "_torchdynamo_orig_callable")
        inner = inspect.unwrap(block.forward)
        assert isinstance(inner, functools.partial) and inner.func.__name__ == "_checkpointed"


def test_nothing_asked_nothing_done():
    model = build_model(RecipeConfig(model=MODEL).model)
    prepare_model(model, RecipeConfig().trainer)
    assert not any(is_checkpointed(b) or "forward" in b.__dict__ for b in model.blocks)


def test_train_and_bench_refuse_compile_alike_without_a_cpp_compiler():
    recipe = RecipeConfig(model=MODEL, trainer=dict(compile=True, accelerator="cpu"))
    x = torch.randint(0, 257, (1, 8))
    messages = []
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        for build in (
            lambda: LanguageModel(recipe.model_dump(mode="json")),
            lambda: time_bare(recipe, [(x, x)], torch.device("cpu")),
        ):
            with pytest.raises(KeelError) as e:
                build()
            messages.append(str(e.value))
    assert messages[0] == messages[1] and "torch.compile cannot run here" in messages[0]
