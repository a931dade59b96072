"""`keelctl repro design`: Keel's variants at micro scale, end to end; the baseline is
depth-sweep's Keel run; each variant's recipe builds the model its keys name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_protocols import check_report
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.model import build_model, sublayer_rules
from keelctl.repro import make_context, plan_protocol, run_protocol
from keelctl.repro.design import VARIANTS, model_keys, planned
from keelctl.repro.plan import recipe_hash, set_flags
from keelctl.repro.scales import get_scale

MICRO = get_scale("micro")


@pytest.fixture(scope="module")
def design_report(tmp_path_factory, micro_overrides, shared_runs, depth_sweep_report):
    """design at micro scale, 1 seed, beside depth-sweep's report (its sibling records)."""
    out = depth_sweep_report[0].parent.parent / "design"
    args = ["repro", "design", "--scale", "micro", "--out", str(out)]
    args += ["--runs-dir", str(shared_runs)]
    for item in micro_overrides:
        args += ["--set", item]
    return out / "report.md", CliRunner().invoke(app, args)


def test_design_end_to_end(design_report):
    report, result = design_report
    assert result.exit_code == 0, result.output
    (depth,) = MICRO.design_depths
    text = check_report(report, n_claims=len(VARIANTS) - 1)  # every variant against Keel
    table = text.split(f"**{depth} sub-layers**")[1].split("![")[0]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert set(VARIANTS) <= set(rows)
    assert "--set model.keel_inner_norm=false" in rows["naive"]
    assert "--set model.final_norm=true" in rows["final-norm"] and "unstated" in rows["final-norm"]
    assert " 1/1 " in rows["naive"] and "n/a" not in rows["naive"]
    assert "design-val-loss.png" in text
    verdicts = text.split("## Verdicts")[1].split("## Results")[0]
    assert "naive residual scaling" in verdicts and "| unstated |" in verdicts


def test_baseline_is_depth_sweeps_keel_run(design_report, shared_runs, micro_overrides):
    """Same label and recipe hash, so one run dir: design trains only its 7 variants."""
    report, _ = design_report
    depth_plan = plan_protocol(
        make_context("depth-sweep", "micro", 1, "x", shared_runs, micro_overrides)
    )
    (keel,) = [s for s in depth_plan if s.scheme == "keel" and s.depth == 4]
    (baseline,) = [
        s
        for v, s in planned(make_context("design", "micro", 1, "y", shared_runs, micro_overrides))
        if v == "keel"
    ]
    assert baseline.run_dir == keel.run_dir
    assert recipe_hash(baseline.recipe) == recipe_hash(keel.recipe)
    runs = report.read_text().split("## Runs")[1].split("## Commands")[0]
    assert runs.count("trained now") == len(VARIANTS) - 1
    assert "from record" in runs.split(f"| {keel.name} |")[1].splitlines()[0]  # depth-sweep's


def test_partial_grid_lists_missing_runs_and_says_n(design_report, tmp_path, micro_overrides):
    """From the recorded seed 0 with --seeds 2 --report-only: seed 1's 8 runs are listed as
    missing and n is 1/2; with no record at all every cell is n/a and every claim no data."""
    report, _ = design_report
    out = tmp_path / "design"
    shutil.copytree(report.parent, out)
    runs = tmp_path / "runs"
    text = run_protocol("design", "micro", 2, out, runs, micro_overrides, train=False).read_text()
    assert f"Partial report: {len(VARIANTS)} planned run(s) have no record yet" in text
    assert text.count("| 1/2 |") == len(VARIANTS) and not runs.exists()
    alone = tmp_path / "alone" / "design"  # no sibling report folder to take records from
    text = run_protocol("design", "micro", 1, alone, runs, micro_overrides, train=False).read_text()
    assert f"{len(VARIANTS) - 1} no data yet (of {len(VARIANTS) - 1} claims)" in text
    assert text.count("| 0/1 | n/a |") == len(VARIANTS)  # n, val loss


def test_variant_recipes_build_the_models_their_keys_name(tmp_path):
    ctx = make_context("design", "cpu", 2, tmp_path)
    specs = dict(((v, s.depth, s.seed), s) for v, s in planned(ctx))
    assert len(specs) == len(VARIANTS) * 2 * len(ctx.scale.design_depths)
    assert all(
        s.lr == ctx.scale.lr and s.recipe.trainer.max_steps == ctx.scale.steps
        for s in specs.values()
    )
    L = 64
    rules = {v: build_model(specs[v, L, 0].recipe.model).sublayers for v in VARIANTS}
    assert all(s.rule.norm_in for s in rules["keel"])
    assert [s.rule.norm_in for s in rules["naive"]] == [True, True] + [False] * (L - 2)
    assert not hasattr(rules["naive"][5].norm_in, "weight")  # LN_in is the identity
    assert {s.rule.alpha for s in rules["alpha-L0.25"][2:]} == {L**0.25}
    assert {s.rule.alpha for s in rules["alpha-L0.5"][2:]} == {8.0}
    assert {s.rule.alpha for s in rules["alpha-1"]} == {1.0}
    assert not rules["first-none"][0].rule.equation.startswith("x +")
    assert build_model(specs["final-norm", L, 0].recipe.model).norm_f is not None
    assert build_model(specs["keel", L, 0].recipe.model).norm_f is None
    assert set_flags(model_keys("alpha-L0.25", 256)) == "--set model.alpha=4.0"
    assert len({s.run_dir for s in specs.values()}) == len(specs)
    sweep = {s.run_dir for s in plan_protocol(make_context("depth-sweep", "cpu", 2, tmp_path))}
    assert {s.run_dir for (v, _, _), s in specs.items() if v == "keel"} <= sweep
    assert not {s.run_dir for (v, _, _), s in specs.items() if v != "keel"} & sweep


def test_plan_prints_an_estimate(tmp_path):
    result = CliRunner().invoke(
        app, ["repro", "design", "--plan", "--seeds", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "CPU-minutes left for 32 of 32 runs" in result.output
    assert not any(tmp_path.iterdir())


def test_train_reads_the_inner_norm_key_from_set():
    """What `keelctl train recipes/keel-64-sublayers.yaml --set model.keel_inner_norm=false`
    builds (train's load_recipe with its overrides); a non-boolean is a one-line error."""
    from keelctl.config import load_recipe
    from keelctl.errors import KeelError

    recipe = Path(__file__).parents[2] / "recipes" / "keel-64-sublayers.yaml"
    cfg = load_recipe(recipe, ["model.keel_inner_norm=false", "model.n_blocks=3"]).model
    assert [r.norm_in for r in sublayer_rules(cfg)] == [True, True, False, False, False, False]
    assert load_recipe(recipe).model.keel_inner_norm is True
    with pytest.raises(KeelError, match="keel_inner_norm"):
        load_recipe(recipe, ["model.keel_inner_norm=maybe"])


def test_gpu_plan_uses_the_papers_shapes_at_two_depths(tmp_path):
    specs = plan_protocol(make_context("design", "gpu", 2, tmp_path))
    assert {s.depth for s in specs} == {64, 512} and len(specs) == len(VARIANTS) * 2 * 2
    for spec in specs:
        m = spec.recipe.model
        assert (m.d_model, m.hidden, m.n_heads, m.kv_heads) == (1024, 3072, 16, 8)
        assert m.residual == "keel"
        assert spec.recipe.trainer.precision == "bf16-mixed" and not spec.run_dir.exists()
