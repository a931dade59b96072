"""Plans: recipe resolution, the recipe hash that names run dirs, and shared runs."""

from __future__ import annotations

import pytest

from keelctl.errors import KeelError
from keelctl.repro import make_context, plan_protocol
from keelctl.repro.plan import make_recipe, recipe_hash
from keelctl.repro.scales import get_scale

CPU = get_scale("cpu")


def recipe(*overrides: str, **kw):
    args = dict(scheme="keel", depth=16, seed=0, lr=3e-3, steps=10, warmup_steps=1) | kw
    return make_recipe(CPU, list(overrides), **args)


def test_recipe_hash_counts_what_a_run_computes():
    base = recipe_hash(recipe())
    assert recipe_hash(recipe("data.cache_dir=/elsewhere", "name=other")) == base
    # keys at their schema default (as a newer schema adds them), or inside a switched-off
    # section, change nothing; a changed value does
    assert recipe_hash(recipe("optim.weight_decay=0.01", "trainer.compile=false")) == base
    assert recipe_hash(recipe("trainer.spike_rollback.factor=9")) == base
    assert recipe_hash(recipe("optim.weight_decay=0.02")) != base
    for change in (dict(lr=6e-3), dict(seed=1), dict(depth=64), dict(scheme="pre_ln")):
        assert recipe_hash(recipe(**change)) != base
    m = recipe().model
    assert (m.n_blocks, m.n_sublayers, m.residual) == (8, 16, "keel")


def test_cpu_plans_share_the_depth_sweep_runs(tmp_path):
    def dirs(protocol):
        return {
            s.run_dir
            for s in plan_protocol(
                make_context(protocol, "cpu", 1, tmp_path / protocol, tmp_path / "runs")
            )
        }

    sweep = dirs("depth-sweep")
    assert len(sweep) == 2 * 3 and dirs("redundancy") == sweep
    # 4 schemes at 3 depths, and peri_ln, lns at max-lr's 2 depths
    assert sweep < dirs("grad-flow") and len(dirs("grad-flow")) == 4 * 3 + 2 * 2
    assert not dirs("max-lr") & sweep
    # lr-sweep's run at depth-sweep's LR is depth-sweep's run at that depth
    assert len(dirs("lr-sweep") & sweep) == 2


def test_bad_depth_and_overrides_are_one_line_errors():
    with pytest.raises(KeelError, match="even"):
        make_recipe(CPU, [], scheme="keel", depth=3, seed=0, lr=1e-3, steps=1, warmup_steps=0)
    with pytest.raises(KeelError, match="unknown key 'optim.lrr'"):
        make_recipe(
            CPU, ["optim.lrr=1"], scheme="keel", depth=2, seed=0, lr=1e-3, steps=1, warmup_steps=0
        )


def test_plan_estimate_counts_only_what_records_lack(tmp_path):
    from keelctl.repro.plan import measure_s, run_s

    ctx = make_context("depth-sweep", "cpu", 1, tmp_path / "depth-sweep", tmp_path / "runs")
    spec = plan_protocol(ctx)[0]
    train = CPU.step_s_per_sublayer * spec.depth * spec.recipe.trainer.max_steps
    evaluate = measure_s(CPU, spec, "eval")
    assert evaluate > 0
    assert run_s(CPU, spec, ctx.out, ("eval",)) == pytest.approx(train + evaluate)
    # a sibling report folder's record of the same run holds its training, not its eval:
    # the weights are gone, so the estimate still retrains it
    sibling = tmp_path / "grad-flow" / "records" / spec.name
    sibling.mkdir(parents=True)
    (sibling / "summary.json").write_text("{}")
    assert run_s(CPU, spec, ctx.out, ()) == 0.0
    assert run_s(CPU, spec, ctx.out, ("eval",)) == pytest.approx(train + evaluate)
    (sibling / "eval.json").write_text("{}")
    assert run_s(CPU, spec, ctx.out, ("eval",)) == 0.0


def test_a_preempted_run_is_not_finished(tmp_path):
    spec = plan_protocol(make_context("depth-sweep", "cpu", 1, tmp_path, tmp_path / "runs"))[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "summary.json").write_text('{"status": "preempted"}')
    assert not spec.finished  # resumed or restarted, never reported or measured
    (spec.run_dir / "summary.json").write_text('{"status": "diverged"}')
    assert spec.finished


def test_a_preempted_runs_record_does_not_count(tmp_path):
    from keelctl.repro import records

    record = tmp_path / "depth-sweep" / "records" / "run"
    record.mkdir(parents=True)
    (record / "summary.json").write_text('{"status": "preempted"}')
    assert not records.has(record)
    assert records.missing(tmp_path / "depth-sweep", "run", ()) == (True, [])
    (record / "summary.json").write_text('{"status": "finished"}')
    assert records.has(record) and not records.has(record, ("eval",))


def test_plan_states_the_recorded_runs_measured_rate(tmp_path):
    """--plan's second estimate: the recorded runs' median seconds per step per sub-layer, from
    their own wall time (a resumed run's counts only its last part and is left out)."""
    import json

    from typer.testing import CliRunner

    from keelctl.cli import app
    from keelctl.repro.plan import recorded_rate

    ctx = make_context("scale-map", "cpu", 1, tmp_path / "scale-map", tmp_path / "runs")
    specs = plan_protocol(ctx)
    assert recorded_rate(ctx.out, specs) is None
    rates = [0.01, 0.02, 0.04, 1.0]  # the last resumed: not counted
    for spec, rate in zip(specs, rates, strict=False):
        record = ctx.out / "records" / spec.name
        record.mkdir(parents=True)
        steps = spec.recipe.trainer.max_steps
        summary = dict(status="finished", steps=steps, wall_time_s=rate * steps * spec.depth)
        summary["resumed_from_step"] = 5 if rate == 1.0 else None
        (record / "summary.json").write_text(json.dumps(summary))
    assert recorded_rate(ctx.out, specs) == (pytest.approx(0.02), 3)
    result = CliRunner().invoke(
        app, ["repro", "scale-map", "--plan", "--seeds", "1", "--out", str(ctx.out)]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "the 3 recorded runs took a median 0.0200 s per step per sub-layer" in text
    assert f"{0.02 / CPU.step_s_per_sublayer:.2f}x the estimate's" in text
