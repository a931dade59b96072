"""`base:` in a recipe: the file it names (relative to the recipe's folder) is read first and
the recipe's keys are laid over it, section by section; chains are followed, and a cycle, a
missing base or an unknown key anywhere in the chain is one line (exit code 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.config import load_recipe
from keelctl.errors import KeelError

BASE = {
    "name": "base",
    "model": {"n_blocks": 4, "d_model": 32, "n_heads": 4, "max_seq_len": 64},
    "data": {"seq_len": 32, "batch_size": 4},
    "optim": {"lr": 1e-3, "betas": [0.9, 0.95]},
}


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_delta_overrides_keys_and_keeps_the_rest(tmp_path):
    write(tmp_path / "base" / "small.yaml", BASE)
    delta = {"base": "base/small.yaml", "name": "wider", "model": {"d_model": 64}}
    recipe = load_recipe(write(tmp_path / "wider.yaml", {**delta, "optim": {"betas": [0.8, 0.9]}}))
    assert recipe.name == "wider"
    assert recipe.model.d_model == 64  # overridden
    assert (recipe.model.n_blocks, recipe.model.n_heads) == (4, 4)  # siblings kept: deep merge
    assert (recipe.data.seq_len, recipe.optim.lr) == (32, 1e-3)  # untouched sections kept
    assert recipe.optim.betas == (0.8, 0.9)  # a list is a value: replaced, not merged
    assert load_recipe(tmp_path / "base" / "small.yaml").model.d_model == 32  # base unchanged


def test_chain_nearest_wins_and_set_comes_last(tmp_path):
    write(tmp_path / "a.yaml", BASE)
    write(
        tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "model": {"n_blocks": 6, "d_model": 48}}
    )
    c = write(
        tmp_path / "sub" / "c.yaml", {"base": "b.yaml", "name": "c", "model": {"n_blocks": 8}}
    )
    recipe = load_recipe(c, ["optim.lr=2e-3"])
    assert recipe.model.n_blocks == 8  # c over b over a
    assert recipe.model.d_model == 48  # from b
    assert recipe.model.n_heads == 4  # from a
    assert recipe.optim.lr == 2e-3  # --set over the whole chain
    assert recipe.name == "c"


@pytest.mark.parametrize(
    "files, start, message",
    [
        ({"a.yaml": {"base": "a.yaml"}}, "a.yaml", "its bases form a cycle"),
        (
            {
                "a.yaml": {"base": "b.yaml", **BASE},
                "b.yaml": {"base": "c.yaml"},
                "c.yaml": {"base": "a.yaml"},
            },
            "a.yaml",
            "b.yaml -> ",
        ),
        ({"a.yaml": {"base": "nope.yaml"}}, "a.yaml", "nope.yaml not found; fix its 'base:' path"),
        (
            {"a.yaml": {"base": "b.yaml"}, "b.yaml": {"base": "gone.yaml"}},
            "a.yaml",
            "gone.yaml not found",
        ),
        ({"a.yaml": {"base": ["b.yaml"]}}, "a.yaml", "bad value for 'base'"),
        (
            {"a.yaml": {"base": "b.yaml"}, "b.yaml": ["not", "a", "mapping"]},
            "a.yaml",
            "b.yaml must be a mapping",
        ),
        (
            {"base.yaml": BASE, "a.yaml": {"base": "base.yaml", "model": {"n_blockz": 2}}},
            "a.yaml",
            "unknown key 'model.n_blockz'; allowed here:",
        ),
        (
            {"base.yaml": {**BASE, "optim": {"lr": -1}}, "a.yaml": {"base": "base.yaml"}},
            "a.yaml",
            "(with base ",  # the bad value is in the base: the message names the chain
        ),
    ],
    ids=[
        "self",
        "three-cycle",
        "missing",
        "missing-up-chain",
        "not-a-path",
        "base-a-list",
        "unknown-key-in-delta",
        "bad-value-in-base",
    ],
)
def test_bad_chain_is_one_clear_error(tmp_path, files, start, message):
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(KeelError) as err:
        load_recipe(tmp_path / start)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_base_is_chosen_in_the_file_not_with_set(tmp_path):
    write(tmp_path / "a.yaml", BASE)
    with pytest.raises(KeelError, match="a recipe's base is chosen in its file"):
        load_recipe(write(tmp_path / "b.yaml", BASE), ["base=a.yaml"])


def test_cli_answers_a_cycle_with_one_line_and_exit_2(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    result = CliRunner().invoke(app, ["train", str(tmp_path / "a.yaml")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "its bases form a cycle" in lines[0], result.stderr
    assert "Traceback" not in result.output + result.stderr
