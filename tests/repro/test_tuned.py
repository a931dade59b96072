"""repro tuned: stages chosen from the records, --plan's CPU-minutes, bad input, and one
end-to-end run at micro scale (every stage in one command, report with verdicts and figures)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.repro import make_context, plan_protocol
from keelctl.repro.scales import get_scale
from keelctl.repro.tuned import pending

CPU = get_scale("cpu")

SCHEMES = ("keel", "pre_ln", "peri_ln", "lns", "post_ln", "peri_ln_embnorm")  # the arms
GRID = (1.5e-3, 3e-3, 6e-3, 1.2e-2)  # cpu's grid: four LRs a factor 2 apart


def cpu_ctx(tmp_path):
    return make_context("tuned", "cpu", 1, tmp_path / "tuned", tmp_path / "runs")


def record(ctx, spec, loss: float, status: str = "finished") -> None:
    folder = ctx.out / "records" / spec.name
    folder.mkdir(parents=True)
    summary = dict(status=status, final_val_loss=loss, steps=1000, max_steps=1000)
    (folder / "summary.json").write_text(json.dumps(summary))


def find(specs, **tags):
    return [s for s in specs if all(getattr(s, k) == v for k, v in tags.items())]


def test_first_plan_is_the_grid_at_64_and_the_equal_lr_cell_at_256(tmp_path):
    specs = plan_protocol(cpu_ctx(tmp_path))
    grid = {(s.scheme, s.lr) for s in find(specs, depth=64, seed=0)}
    assert grid == {(k, lr) for k in SCHEMES for lr in GRID}
    equal = {(s.scheme, s.seed) for s in find(specs, depth=256)}
    assert equal == {(k, seed) for k in ("keel", "pre_ln", "post_ln") for seed in (0, 1)}
    assert all(s.lr == CPU.lr and "steps1000" in s.name for s in find(specs, depth=256))
    assert {s.recipe.trainer.max_steps for s in specs} == {4 * CPU.steps}
    assert len(specs) == 24 + 6
    # per arm: 2 more seeds at 64, two LRs and a second seed at 256, still to choose
    assert len(pending(cpu_ctx(tmp_path))) == 6 * (2 + 3)


def test_the_embedding_norm_arm_is_peri_ln_with_embedding_norm_only(tmp_path):
    specs = plan_protocol(cpu_ctx(tmp_path))
    arm = find(specs, scheme="peri_ln_embnorm", depth=64, lr=3e-3)[0]
    peri = find(specs, scheme="peri_ln", depth=64, lr=3e-3)[0]
    assert arm.recipe.model.residual == "peri_ln" and arm.recipe.model.embedding_norm
    assert not peri.recipe.model.embedding_norm
    differ = {
        k for k, v in arm.recipe.model.model_dump().items() if v != getattr(peri.recipe.model, k)
    }
    assert differ == {"embedding_norm"}
    assert arm.recipe.optim == peri.recipe.optim and arm.recipe.trainer == peri.recipe.trainer
    assert arm.name.startswith("peri_ln_embnorm-L64-lr0.003-steps1000-s0-")


def test_later_stages_follow_the_recorded_losses(tmp_path):
    ctx = cpu_ctx(tmp_path)
    losses = {1.5e-3: 2.0, 3e-3: 1.9, 6e-3: 1.8, 1.2e-2: None}  # None: diverged, +inf
    for spec in find(plan_protocol(ctx), scheme="lns", depth=64):
        loss = losses[spec.lr]
        record(ctx, spec, loss, "finished" if loss is not None else "diverged")
    specs = plan_protocol(ctx)
    assert {(s.lr, s.seed) for s in find(specs, scheme="lns", depth=64, lr=6e-3)} == {
        (6e-3, 0),
        (6e-3, 1),
        (6e-3, 2),
    }
    deep = find(specs, scheme="lns", depth=256)
    assert {(s.lr, s.seed) for s in deep} == {(6e-3, 0), (3e-3, 0)}  # the two best of 64
    assert len(pending(ctx)) == 5 * 5 + 1  # lns: only the second seed at 256 left to choose
    # at 256 the better of the two wins, whatever 64 said; its second seed follows
    record(ctx, find(deep, lr=6e-3)[0], 2.5)
    record(ctx, find(deep, lr=3e-3)[0], 2.4)
    deep = find(plan_protocol(ctx), scheme="lns", depth=256)
    assert {(s.lr, s.seed) for s in deep} == {(6e-3, 0), (3e-3, 0), (3e-3, 1)}
    assert len(pending(ctx)) == 5 * 5


def test_keel_at_256_also_weighs_the_equal_lr_run(tmp_path):
    ctx = cpu_ctx(tmp_path)
    for spec in find(plan_protocol(ctx), scheme="keel", depth=64):
        record(ctx, spec, {1.5e-3: 2.0, 3e-3: 2.1, 6e-3: 1.8, 1.2e-2: 1.9}[spec.lr])
    deep = find(plan_protocol(ctx), scheme="keel", depth=256, seed=0)
    assert sorted(s.lr for s in deep) == [3e-3, 6e-3, 1.2e-2]  # the shared LR's run is there


def test_plan_states_cpu_minutes_before_anything_runs(tmp_path):
    ctx = cpu_ctx(tmp_path)
    result = CliRunner().invoke(app, ["repro", "tuned", "--plan", "--out", str(ctx.out)])
    assert result.exit_code == 0, result.output
    # 36 runs at 64 sub-layers (24 of the grid, 2 more seeds x 6), 24 at 256 (6 equal-LR, then
    # 3 per arm), 1000 steps each, at the scale's seconds per step per sub-layer
    minutes = CPU.step_s_per_sublayer * 1000 * (36 * 64 + 24 * 256) / 60
    text = " ".join(result.output.split())
    assert f"estimate: {minutes:.0f} CPU-minutes left for 60 of 60 runs" in text
    assert not (ctx.out / "records").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lrs", "3e-3"], "give at least two distinct positive learning rates"),
        (["--lrs", "3e-3,3e-3"], "give at least two distinct positive learning rates"),
        (["--lrs", "fast,slow"], "give learning rates separated by commas"),
        (["--seeds", "3"], "repro tuned fixes its seeds"),
    ],
)
def test_bad_grids_and_seeds_are_one_line_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(
        app, ["repro", "tuned", "--plan", "--out", str(tmp_path / "t"), *args]
    )
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_lrs_belongs_to_tuned_only(tmp_path):
    result = CliRunner().invoke(app, ["repro", "depth-sweep", "--plan", "--lrs", "1e-3,2e-3"])
    assert result.exit_code == 2 and "--lrs is the LR grid of repro tuned" in result.output


BEST = {
    "keel": 6e-3,
    "pre_ln": 3e-3,
    "peri_ln": 3e-3,
    "lns": 6e-3,
    "post_ln": 3e-3,
    "peri_ln_embnorm": 6e-3,
}


def fake_train(spec, callbacks, on_step) -> None:
    """Stands in for training (the engine's training is tested by the other protocols): a
    finished run whose loss is lowest at BEST[scheme], Keel's lowest of all."""
    import math

    loss = 2.0 + 0.1 * abs(math.log2(spec.lr / BEST[spec.scheme])) + 0.01 * spec.seed
    loss -= 0.05 * (spec.scheme == "keel") + 0.001 * spec.depth
    steps = spec.recipe.trainer.max_steps
    spec.run_dir.mkdir(parents=True)
    last = steps - 1
    rows = [f"{t},{loss + 1 - t / steps},{loss if t == last else ''}" for t in range(steps)]
    (spec.run_dir / "metrics.csv").write_text("step,train_loss,val_loss\n" + "\n".join(rows))
    summary = dict(status="finished", steps=steps, max_steps=steps, final_val_loss=loss)
    (spec.run_dir / "summary.json").write_text(json.dumps(summary | {"wall_time_s": 1.0}))


def test_one_command_runs_every_stage_and_reports_best_vs_best(monkeypatch, tmp_path):
    from keelctl.repro import protocol

    monkeypatch.setattr(protocol, "_train", fake_train)
    out = tmp_path / "tuned"
    result = CliRunner().invoke(app, ["repro", "tuned", "--scale", "micro", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ctx = make_context("tuned", "micro", 1, out, out / "runs")
    assert pending(ctx) == []  # every stage chosen and trained
    names = {p.name for p in (out / "records").iterdir()}
    assert {s.name for s in plan_protocol(ctx)} == names
    assert all((out / "records" / n / "provenance.json").is_file() for n in names)
    specs = plan_protocol(ctx)
    for scheme, lr in BEST.items():  # 3 seeds at the tuning depth, 2 at the deep one
        assert {s.seed for s in find(specs, scheme=scheme, depth=2, lr=lr)} == {0, 1, 2}
        assert {s.seed for s in find(specs, scheme=scheme, depth=4, lr=lr)} == {0, 1}
    report = " ".join((out / "report.md").read_text().split())
    assert "at its best LR: Keel reaches a lower validation loss than lns" in report
    assert "at its best LR: Keel reaches a lower validation loss than peri_ln_embnorm" in report
    # fake_train at 2 sub-layers, seeds 0-2: 2 - 0.05 - 0.002 + 0.01 (mean seed) for Keel
    assert "keel@0.006 1.958 ± 0.01 (n=3) vs pre_ln@0.003 2.008 ± 0.01 (n=3)" in report
    assert "equal LR 0.003: Keel reaches a lower validation loss than pre_ln" in report
    assert (out / "loss-vs-lr.png").is_file() and (out / "best-loss-curves.png").is_file()


def test_report_from_no_records_says_no_data_and_lists_the_missing_runs(tmp_path):
    out = tmp_path / "tuned"
    args = ["repro", "tuned", "--scale", "micro", "--out", str(out), "--report-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "0 reproduced, 0 not at this scale, 0 opposite, 14 no data yet" in report
    assert "Partial report: 18 planned run(s) have no record yet" in report  # 12 grid + 6 equal


def test_a_partial_grid_has_no_best_lr_yet_but_equal_lr_is_judged(tmp_path):
    """Best vs best waits for each scheme's whole seed-0 grid; the equal-LR claim does not."""
    out = tmp_path / "tuned"
    ctx = make_context("tuned", "micro", 1, out, out / "runs")
    shared, steps = ctx.scale.lr, plan_protocol(ctx)[0].steps
    for spec in plan_protocol(ctx):  # keel and pre_ln at the tuning depth, the shared LR only
        if spec.depth == 2 and spec.lr == shared and spec.scheme in ("keel", "pre_ln"):
            record(ctx, spec, 1.5 if spec.scheme == "keel" else 2.0)
    args = ["repro", "tuned", "--scale", "micro", "--out", str(out), "--report-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in (out / "report.md").read_text().splitlines()
        if line.startswith("| 2 sub-layers")
    }
    lower = "Keel reaches a lower validation loss than"
    best = f"2 sub-layers, {steps} steps, each at its best LR: {lower}"
    equal = f"2 sub-layers, {steps} steps, equal LR {shared:g}: {lower}"
    assert "**no data yet**" in rows[f"{best} pre_ln"]  # one LR of two: no best LR yet
    assert "**reproduced (single seed)**" in rows[f"{equal} pre_ln"]
    assert "| 2 | keel | not yet (grid incomplete) |" in (out / "report.md").read_text()
