"""repro's scales are files (keelctl/repro/scale_recipes/NAME.yaml): each shipped one loads and
documents every key; an unknown, missing or badly typed key, a bad recipe key or an unknown
scale is one line and exit code 2 from the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.repro import make_context, plan_protocol, scales
from keelctl.repro.scales import SCALES_DIR, Scale, get_scale, scale_names


def test_shipped_scales_load_and_are_named_by_their_files():
    assert {"micro", "cpu", "gpu"} <= set(scale_names())
    for name in scale_names():
        assert get_scale(name).name == name


@pytest.mark.parametrize("name", ["micro", "cpu", "gpu"])
def test_every_key_of_a_scale_file_is_commented(name):
    lines = (SCALES_DIR / f"{name}.yaml").read_text().splitlines()
    for key in set(Scale.model_fields) - {"name"}:
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert "#" in lines[i] or lines[i - 1].startswith("#"), f"{name}.yaml: {key} undocumented"


@pytest.fixture
def scale_dir(tmp_path, monkeypatch):
    """A scale folder holding a copy of cpu.yaml, which each test then breaks."""
    shutil.copy(SCALES_DIR / "cpu.yaml", tmp_path / "cpu.yaml")
    monkeypatch.setattr(scales, "SCALES_DIR", tmp_path)
    return tmp_path


def write_scale(folder, name, change):
    data = yaml.safe_load((folder / "cpu.yaml").read_text())
    change(data)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def one_line_exit_2(name: str) -> str:
    result = CliRunner().invoke(app, ["repro", "depth-sweep", "--scale", name, "--plan"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output + result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(("protocol", "seeds"), [("depth-sweep", 3), ("lr-sweep", 3)])
def test_cpu_scale_plans_the_committed_runs(protocol, seeds):
    """The committed records were made from the scale when it was Python: the file must plan
    the same run names (each hashes its resolved recipe)."""
    records = Path(__file__).parents[2] / "docs" / "results" / protocol / "records"
    specs = plan_protocol(make_context(protocol, "cpu", seeds))
    assert {s.name for s in specs} == {p.name for p in records.iterdir()}


def test_unknown_key_names_it_and_the_allowed_keys(scale_dir):
    write_scale(scale_dir, "typo-b", lambda d: d.update(depth=[16]))
    line = one_line_exit_2("typo-b")
    assert "unknown key 'depth'" in line and "depths" in line and "typo-b.yaml" in line


def test_missing_key_is_named(scale_dir):
    write_scale(scale_dir, "short-c", lambda d: d.pop("max_lr_steps"))
    assert re.search(r"'max_lr_steps'.*Field required", one_line_exit_2("short-c"))


def test_bad_value_is_named(scale_dir):
    write_scale(scale_dir, "bad-d", lambda d: d.update(depths=[16, -4]))
    assert "bad value for 'depths.1'" in one_line_exit_2("bad-d")


def test_unknown_recipe_key_is_named_with_its_section(scale_dir):
    write_scale(scale_dir, "recipe-e", lambda d: d["recipe"]["optim"].update(lrr=1))
    line = one_line_exit_2("recipe-e")
    assert "recipe" in line and "unknown key 'optim.lrr'" in line


def test_name_key_is_refused(scale_dir):
    write_scale(scale_dir, "named-f", lambda d: d.update(name="other"))
    with pytest.raises(KeelError, match="without 'name'"):
        get_scale("named-f")


def test_unknown_scale_lists_the_files(scale_dir):
    line = one_line_exit_2("nope")
    assert "unknown --scale 'nope'" in line and "cpu" in line
