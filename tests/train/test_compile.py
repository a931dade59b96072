"""trainer.compile: per-block compile in place, and a one-line error where inductor cannot run."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.model import ModelConfig, build_model
from keelctl.train.compile import compile_blocks


def test_compile_blocks_compiles_each_block_and_keeps_names():
    model = build_model(ModelConfig(d_model=32, n_heads=4, n_blocks=3))
    names = list(model.state_dict())
    compile_blocks(model)
    assert list(model.state_dict()) == names
    assert all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in model.blocks)
    assert not hasattr(model.forward, "_torchdynamo_orig_callable")  # the loop stays eager


def test_compile_without_a_cpp_compiler_is_one_line_and_leaves_no_run_dir(tiny_args, tmp_path):
    run = tmp_path / "run"
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        result = CliRunner().invoke(
            app, ["train", *tiny_args("trainer.compile=true"), "--run-dir", str(run)]
        )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "torch.compile cannot run here" in lines[0] and "trainer.compile=false" in lines[0]
    assert not run.exists()
