"""scale-map: its plan (cells within budget, runs shared with depth-sweep, grad-flow and max-lr),
the "trains" rule and the "smallest cell" sentence on synthetic verdict grids, and the protocol
end to end at micro scale through the CLI."""

from __future__ import annotations

import math
import re

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.repro import make_context, max_lr, plan_protocol, scale_map
from keelctl.repro.plan import Context, Outcome
from keelctl.repro.readings import final_loss
from keelctl.repro.scale_map_grid import smallest_sentence, trains_verdict
from keelctl.repro.scales import get_scale
from keelctl.repro.verdicts import NO_DATA, NOT_AT_SCALE, OPPOSITE, REPRODUCED

MICRO = get_scale("micro")


def _cells(specs) -> set[tuple[str, int, int]]:
    return {(s.scheme, s.depth, s.recipe.trainer.max_steps) for s in specs}


def test_plan_leaves_out_cells_over_budget_and_shares_depth_sweep_runs(tmp_path):
    ctx = make_context("scale-map", "micro", 2, tmp_path / "out", tmp_path / "runs")
    specs = plan_protocol(ctx)
    # micro: depths (2, 4) x steps (4, 6), at most 16 sub-layer-steps: 4 x 6 = 24 is left out
    assert scale_map.map_cells(ctx.scale) == [(2, 4), (2, 6), (4, 4)]
    assert scale_map.beyond(ctx.scale) == [(4, 6)]
    assert not any(s.depth == 4 and s.recipe.trainer.max_steps == 6 for s in specs)
    runs = [s for s in specs if not scale_map.is_ramp(s)]
    ramps = [s for s in specs if scale_map.is_ramp(s)]
    grid = {(d, n) for d, n in scale_map.map_cells(ctx.scale)}
    assert _cells(runs) == {(k, d, n) for k in ("keel", "pre_ln", "post_ln") for d, n in grid} | {
        ("keel", 8, 4),
        ("post_ln", 8, 4),
    }
    assert _cells(ramps) == {(k, d, n) for k in ("keel", "pre_ln") for d, n in grid}
    assert len(specs) == 2 * (3 * 5 + 2)  # seeds x (cells x 5 runs + the trains cell's 2)
    for s in ramps:  # max-lr's ramp over the cell's steps: 0 -> peak, no decay
        assert s.recipe.optim.warmup_steps == s.recipe.trainer.max_steps
        assert s.lr == ctx.scale.max_lr_peak
    for s in runs:  # depth-sweep's schedule shape over the cell's steps
        assert s.lr == ctx.scale.lr
        assert s.recipe.optim.warmup_steps == max(1, s.recipe.trainer.max_steps // 10)
    # the steps == scale.steps column (only depth 2 within budget) is depth-sweep's keel and
    # pre_ln runs and grad-flow's post_ln runs: the same run dirs
    ours = {s.run_dir for s in runs if s.recipe.trainer.max_steps == ctx.scale.steps}
    theirs = {
        s.run_dir
        for other in ("depth-sweep", "grad-flow")
        for s in plan_protocol(make_context(other, "micro", 2, ctx.out, ctx.runs_dir))
        if s.scheme in scale_map.SWEEP_SCHEMES and s.depth == 2
    }
    assert len(ours) == 2 * 3 and ours == theirs
    assert len({s.run_dir for s in specs}) == len(specs)


def test_ramps_at_max_lr_length_are_max_lr_runs(tmp_path):
    scale = MICRO.model_copy(update=dict(map_steps=(4, MICRO.max_lr_steps), map_max_cost=None))
    ctx = Context("scale-map", scale, [0], tmp_path / "out", tmp_path / "runs", [])
    ours = {s.run_dir for s in scale_map.plan(ctx) if scale_map.is_ramp(s)}
    theirs = {s.run_dir for s in max_lr.plan(ctx) if s.scheme in scale_map.RAMP_SCHEMES}
    assert theirs < ours  # max-lr's keel and pre_ln ramps at both depths, same run dirs
    assert len(theirs) == 4


def test_a_scale_without_a_map_is_refused(tmp_path):
    scale = MICRO.model_copy(update=dict(map_depths=()))
    ctx = Context("scale-map", scale, [0], tmp_path, tmp_path, [])
    with pytest.raises(KeelError, match="no scale map"):
        scale_map.plan(ctx)


def test_trains_rule():
    assert trains_verdict([True, True], [False, False]) == REPRODUCED
    assert trains_verdict([False, False], [True, True]) == OPPOSITE
    assert trains_verdict([True, False], [False, False]) == NOT_AT_SCALE  # a Keel seed failed
    assert trains_verdict([True, True], [True, False]) == NOT_AT_SCALE  # a Post-LN seed trained
    assert trains_verdict([True, True], [True, True]) == NOT_AT_SCALE  # both train
    assert trains_verdict([False], [False, False]) == NOT_AT_SCALE + " (single seed)"
    assert trains_verdict([True], [False]) == REPRODUCED + " (single seed)"
    assert trains_verdict([], [False]) == NO_DATA
    assert trains_verdict([True], []) == NO_DATA


def test_trains_threshold_is_the_measured_unigram_level_unless_the_data_changed(tmp_path):
    def level(scale, *overrides):
        ctx = make_context("scale-map", scale, 1, tmp_path, None, overrides)
        return scale_map.unigram_level(ctx, [])[0]

    assert level("cpu") == level("cpu", "data.cache_dir=/x") == 3.031
    assert level("cpu", "data.corpus=/x") == pytest.approx(math.log(257))  # uniform level
    assert level("micro") == pytest.approx(math.log(257))  # micro has no measured level


def test_trains_cells_from_run_summaries(tmp_path):
    """A run trains below the level and not diverged: a diverged run with a low loss fails."""
    ctx = make_context("scale-map", "micro", 2, tmp_path, None)
    specs = {(s.scheme, s.seed): s for s in plan_protocol(ctx) if s.depth == 8}

    def run(scheme, seed, loss, status="finished"):
        summary = {"final_val_loss": loss, "status": status}
        return Outcome(specs[(scheme, seed)], tmp_path, summary, "from record")

    trains = scale_map.CLAIMS[3]
    outcomes = [run("keel", 0, 2.9), run("keel", 1, 3.0), run("post_ln", 0, 3.5)]
    outcomes.append(run("post_ln", 1, 1.0, status="diverged"))
    result = scale_map._trains_cells([(8, 4)], trains, outcomes, level=3.031)[(8, 4)]
    assert result.verdict.verdict == REPRODUCED
    assert result.keel.startswith("2 of 2 train") and result.base.startswith("0 of 2 train")
    outcomes[1] = run("keel", 1, 3.1)  # above the unigram level: a Keel seed fails
    result = scale_map._trains_cells([(8, 4)], trains, outcomes, level=3.031)[(8, 4)]
    assert result.verdict.verdict == NOT_AT_SCALE and result.note == "1/2 vs 0/2\ntrain"


def test_a_diverged_seed_makes_a_cell_undecided_not_a_crash(tmp_path):
    ctx = make_context("scale-map", "micro", 2, tmp_path, None)
    specs = {
        (s.scheme, s.seed): s
        for s in plan_protocol(ctx)
        if (s.depth, s.recipe.trainer.max_steps, s.lr) == (2, 4, 3e-3)
    }
    summaries = {
        ("keel", 0): 2.0,
        ("keel", 1): 2.1,
        ("pre_ln", 0): 3.0,
        ("pre_ln", 1): None,  # diverged: summary.json status "diverged"
    }
    outcomes = [
        Outcome(
            specs[k],
            tmp_path,
            {"final_val_loss": v, "status": "diverged" if v is None else "finished"},
            "from record",
        )
        for k, v in summaries.items()
    ]
    beats = scale_map.CLAIMS[0]
    result = scale_map._interval_cells([(2, 4)], beats, outcomes, final_loss, lambda c: 0.01)[2, 4]
    assert result.verdict.verdict == NOT_AT_SCALE + " (some runs diverged)"
    assert result.keel == "2.050 ± 0.071 (n=2)" and result.base == "3.000 + 1 diverged"
    del outcomes[3]  # Pre-LN's finished seed alone: a single-seed comparison
    result = scale_map._interval_cells([(2, 4)], beats, outcomes, final_loss, lambda c: 0.01)[2, 4]
    assert result.verdict.verdict == REPRODUCED + " (single seed)"  # 3.0 - 2.05 > 0.01


def test_smallest_cell_sentence():
    grid = {
        (16, 1000): REPRODUCED,  # 16000 sub-layer-steps
        (64, 100): REPRODUCED + " (single seed)",  # 6400: fewer, so first
        (16, 100): OPPOSITE,  # 1600: cheapest, but not reproduced
        (256, 100): NOT_AT_SCALE,
        (64, 250): NO_DATA,
        (16, 250): NO_DATA,
    }
    assert smallest_sentence("Keel beats Pre-LN", grid) == (
        "**Keel beats Pre-LN**: holds (reproduced) first at 64 sub-layers x 100 steps "
        "(6400 sub-layer-steps); cells reproduced: 2 of 6; missing: 2 (16 x 250, 64 x 250)."
    )
    grid[(16, 400)] = REPRODUCED  # 6400 too: the shallower wins the tie
    assert "first at 16 sub-layers x 400 steps (6400" in smallest_sentence("c", grid)
    none = smallest_sentence("c", {(16, 100): OPPOSITE, (64, 100): NO_DATA})
    assert (
        none == "**c**: holds in no measured cell; cells reproduced: 0 of 2; missing: 1 (64 x 100)."
    )


def test_cpu_and_gpu_plans():
    cpu = get_scale("cpu")
    assert scale_map.beyond(cpu) == [] and scale_map.equal_lr_cells(cpu) == [(256, 1000)]
    assert len(scale_map.map_cells(cpu)) == 8
    assert scale_map.trains_cells(cpu) == [(1024, 100)]
    assert cpu.steps in cpu.map_steps and 0 < cpu.unigram_nll < 3.5
    gpu = make_context("scale-map", "gpu", 2, "/tmp/unused")
    specs = plan_protocol(gpu)
    assert {s.depth for s in specs} == {64, 128, 512, 1024}
    assert all(
        s.depth * s.recipe.trainer.max_steps <= gpu.scale.map_max_cost
        for s in specs
        if s.depth != 1024
    )


def test_the_256_x_1000_cell_is_tuneds_equal_lr_runs_without_ramps(tmp_path):
    ctx = make_context("scale-map", "cpu", 2, tmp_path / "map", tmp_path / "runs")
    cell = [s for s in plan_protocol(ctx) if (s.depth, s.recipe.trainer.max_steps) == (256, 1000)]
    assert {(s.scheme, s.seed, s.lr) for s in cell} == {
        (k, seed, ctx.scale.lr) for k in scale_map.SWEEP_SCHEMES for seed in (0, 1)
    }  # no ramps there
    tuned = make_context("tuned", "cpu", 1, tmp_path / "tuned", tmp_path / "runs")
    assert {s.run_dir for s in cell} <= {s.run_dir for s in plan_protocol(tuned)}


def test_equal_lr_cells_are_judged_on_every_claim_but_higher_lr(tmp_path):
    from keelctl.repro.plan import Progress
    from keelctl.repro.report import Report

    # micro with cpu's shape: (4, 6) over map_max_cost, within map_equal_lr_max_cost
    scale = MICRO.model_copy(update=dict(map_equal_lr_max_cost=24))
    ctx = Context("scale-map", scale, [0], tmp_path, tmp_path / "runs", [])
    assert scale_map.equal_lr_cells(scale) == [(4, 6)] and scale_map.beyond(scale) == []
    cell = [s for s in scale_map.plan(ctx) if (s.depth, s.recipe.trainer.max_steps) == (4, 6)]
    assert sorted(s.scheme for s in cell) == sorted(scale_map.SWEEP_SCHEMES)
    report = Report(tmp_path, "scale-map", "claim")
    scale_map.analyse(ctx, [], report, Progress(1, None))
    judged = {
        v.claim.split(": ", 1)[1]
        for v in report.verdicts
        if v.claim.startswith("4 sub-layers, 6 steps")
    }
    assert judged == {c.text for c in scale_map.CLAIMS if c.key != "higher-lr"}
    assert "no ramps, so no higher-lr verdict (hatched there): 4 x 6;" in " ".join(report.results)


def _run_cli(out, runs, overrides, *extra) -> str:
    args = ["repro", "scale-map", "--scale", "micro", "--out", str(out), "--runs-dir", str(runs)]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return (out / "report.md").read_text()


def test_end_to_end_partial_then_report_only(
    depth_sweep_report, tmp_path, shared_runs, micro_overrides
):
    """Only depth 2 trains (--depths 2): 8 runs, plus depth-sweep's two runs at 6 steps reused
    from the shared runs dir; the report names what is missing and draws the four maps."""
    assert depth_sweep_report[1].exit_code == 0
    out = tmp_path / "scale-map"
    text = _run_cli(out, shared_runs, micro_overrides, "--depths", "2")
    assert text.count("trained now") == 8 and text.count("run dir reused") == 2
    assert "Partial report: 7 planned run(s) have no record yet" in text
    for key in ("beats", "higher-lr", "grad-level", "trains"):
        assert (out / f"scale-map-{key}.png").stat().st_size > 5000
        assert f"](scale-map-{key}.png)" in text
    sentences = re.findall(r"^- \*\*(.+?)\*\*: (holds .+)$", text, re.M)
    assert [s[0] for s in sentences] == [c.text for c in scale_map.CLAIMS]
    for _, sentence in sentences[:2]:  # (4, 4) has no run: missing in every claim
        assert re.search(r"cells reproduced: \d of 3; missing: 1 \(4 x 4\)\.$", sentence)
    for _, sentence in sentences[2:]:  # grad-level and trains also check the trains cell (8, 4)
        assert re.search(r"of 4; missing: 2 \(4 x 4, 8 x 4\)\.$", sentence)
    assert "Beyond this scale's budget, not planned (hatched): 4 x 6." in text
    verdicts = text.split("## Verdicts", 1)[1].split("## Results", 1)[0]
    rows = [line for line in verdicts.splitlines() if line.startswith("| 2 sub-layers")]
    assert len(rows) == 2 * 4  # cells (2, 4) and (2, 6), four claims each
    assert sum("| 4 sub-layers, 4 steps" in line for line in verdicts.splitlines()) == 4
    assert "| 8 sub-layers, 4 steps: Keel trains where Post-LN fails |" in verdicts
    assert "| 8 sub-layers, 4 steps: Keel's stream gradient holds level" in verdicts
    assert verdicts.count(f"**{NO_DATA}**") == 6  # (4, 4) x 4 claims + (8, 4) grads, trains

    again = _run_cli(out, tmp_path / "no-runs", micro_overrides, "--report-only")
    assert again.count("from record") == 10 and "trained now" not in again
    for part in (
        lambda r: r.split("## Results")[0],
        lambda r: r.split("Grid:")[1].split("## Runs")[0],
    ):
        assert part(again) == part(text)  # same verdicts, sentences and tables
    assert not (tmp_path / "no-runs").exists()


def test_plan_cli_prints_the_estimate_and_writes_nothing(tmp_path):
    args = ["repro", "scale-map", "--scale", "cpu", "--seeds", "2", "--plan", "--jobs", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    # 8 cells x 5 runs x 2 seeds + the trains cell 2 x 2 + the equal-LR cell 3 x 2
    assert "CPU-minutes left for 90 of 90 runs" in result.output
    assert "maxlr-keel-L256-steps250-s1" in result.output and "--jobs 2" in result.output
    assert not any(tmp_path.iterdir())
