"""Each protocol end to end at micro scale (a few steps on the tiny corpus), resumability, and
the paper-scale plans (planned, never trained)."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.repro import make_context, plan_protocol, run_protocol
from keelctl.runs import SUMMARY_JSON, Run, config_hash

VERDICT_LINE = re.compile(
    r"^\*\*Verdicts: (\d+) reproduced, (\d+) not at this scale, "
    r"(\d+) opposite \(of (\d+) claims\)\.\*\*$",
    re.M,
)


def verdict_rows(report: str) -> list[str]:
    section = report.split("## Verdicts", 1)[1].split("## Results", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "**" in line]


def check_report(path, n_claims: int) -> str:
    text = path.read_text()
    m = VERDICT_LINE.search(text)
    assert m, text[:500]
    assert sum(map(int, m.groups()[:3])) == int(m[4]) == n_claims == len(verdict_rows(text))
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (path.parent / image).stat().st_size > 1000
    return text


def test_depth_sweep_cli_end_to_end(depth_sweep_report, shared_runs):
    report, result = depth_sweep_report
    assert result.exit_code == 0, result.output
    assert "Verdicts:" in result.output
    text = check_report(report, n_claims=3)  # 2 depths + "gain grows with depth"
    runs = sorted(p for p in shared_runs.iterdir() if (p / SUMMARY_JSON).is_file())
    assert len(runs) == 4
    plan = plan_protocol(
        make_context("depth-sweep", "micro", 1, report.parent, shared_runs, _overrides(text))
    )
    for spec in plan:
        assert config_hash(spec.recipe.model) in text
        recipe = report.parent / "recipes" / f"{spec.name}.yaml"
        assert f"keelctl train {recipe} --run-dir {spec.run_dir}" in text
        assert recipe.is_file()
    assert {(s.scheme, s.depth) for s in plan} == {
        (k, d) for k in ("keel", "pre_ln") for d in (2, 4)
    }
    assert text.count("trained now") == 4


def _overrides(report: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith("keelctl repro"))
    return re.findall(r"--set (\S+)", line)


def test_second_invocation_skips_finished_runs(depth_sweep_report, shared_runs, micro_overrides):
    report, _ = depth_sweep_report
    stamps = {p: (p / SUMMARY_JSON).stat().st_mtime_ns for p in shared_runs.iterdir()}
    run_protocol("depth-sweep", "micro", 1, report.parent, shared_runs, micro_overrides)
    assert {p: (p / SUMMARY_JSON).stat().st_mtime_ns for p in stamps} == stamps
    text = report.read_text()
    assert text.count("from record") == 4 and "trained now" not in text


def _numbers(report: str) -> str:
    """The report up to its Runs section: verdicts, tables (no timings or paths)."""
    return report.split("## Runs")[0]


def test_records_alone_rebuild_the_report_on_a_fresh_machine(
    depth_sweep_report, tmp_path, micro_overrides
):
    """Copy only the report folder (records are kilobytes, no weights): the rerun trains
    nothing, needs no run dir, and writes the same numbers."""
    report, _ = depth_sweep_report
    fresh = tmp_path / "clone" / "depth-sweep"
    shutil.copytree(report.parent, fresh)
    sizes = [p.stat().st_size for p in (fresh / "records").rglob("*") if p.is_file()]
    assert sizes and max(sizes) < 100_000
    assert not list((fresh / "records").rglob("*.safetensors"))
    again = run_protocol("depth-sweep", "micro", 1, fresh, tmp_path / "no-runs", micro_overrides)
    assert not (tmp_path / "no-runs").exists()
    assert _numbers(again.read_text()) == _numbers(report.read_text())


def test_a_partial_sweep_reports_the_missing_runs(depth_sweep_report, tmp_path, micro_overrides):
    """Seed 1 was never trained: --report-only writes the report from the recorded seed 0 and
    lists seed 1's runs as missing; --depths trains only the depths asked for."""
    report, _ = depth_sweep_report
    out = tmp_path / "depth-sweep"
    shutil.copytree(report.parent, out)
    runs = tmp_path / "runs"
    partial = run_protocol(
        "depth-sweep", "micro", 2, out, runs, micro_overrides, train=False
    ).read_text()
    assert "Partial report: 4 planned run(s) have no record yet" in partial
    missing = partial.split("Partial report")[1].split("## ")[0]
    assert (
        sum(
            line.startswith("| keel-") or line.startswith("| pre_ln-")
            for line in missing.splitlines()
        )
        == 4
    )
    assert all("-s1-" in line for line in missing.splitlines() if line.startswith("| keel-"))
    assert not runs.exists()
    text = run_protocol(
        "depth-sweep", "micro", 2, out, runs, micro_overrides, depths=[2]
    ).read_text()
    assert "Partial report: 2 planned run(s)" in text and text.count("trained now") == 2
    with pytest.raises(KeelError, match="--depths"):
        run_protocol("depth-sweep", "micro", 2, out, runs, micro_overrides, depths=[3])


def test_lr_sweep_end_to_end_resumes_interrupted_runs(tmp_path, micro_overrides):
    """A run killed after its first checkpoint resumes from it; one killed before any
    checkpoint starts over; a run dir holding foreign files is left alone."""
    import lightning as L

    from keelctl.train import train

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise RuntimeError("killed")

    ctx = make_context("lr-sweep", "micro", 1, tmp_path / "out", tmp_path / "runs", micro_overrides)
    first, second, *_ = plan_protocol(ctx)
    with pytest.raises(RuntimeError, match="killed"):  # val_every 4: last.ckpt at step 4
        train(first.recipe, first.run_dir, progress_bar=False, callbacks=[Crash()])
    second.run_dir.mkdir(parents=True)
    (second.run_dir / "config.yaml").write_text("interrupted before any checkpoint\n")
    run_protocol("lr-sweep", "micro", 1, ctx.out, ctx.runs_dir, micro_overrides)
    resumed, restarted = (Run(s.run_dir).summary() for s in (first, second))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    assert restarted["steps"] == 6 and restarted["resumed_from_step"] is None
    check_report(ctx.out / "report.md", n_claims=2)  # one claim per LR

    (second.run_dir / SUMMARY_JSON).unlink()
    (second.run_dir / "checkpoints" / "last.ckpt").unlink()
    (second.run_dir / "notes.txt").write_text("mine")
    run_protocol("lr-sweep", "micro", 1, ctx.out, ctx.runs_dir, micro_overrides)  # its record
    shutil.rmtree(ctx.out / "records" / second.name)
    with pytest.raises(KeelError, match="notes.txt"):
        run_protocol("lr-sweep", "micro", 1, ctx.out, ctx.runs_dir, micro_overrides)


def test_max_lr_end_to_end(tmp_path, micro_overrides):
    report = run_protocol("max-lr", "micro", 1, tmp_path / "r", None, micro_overrides)
    text = check_report(report, n_claims=5 * 2)  # 3 baselines, peri_ln, lns x 2 depths
    ctx = make_context("max-lr", "micro", 1, tmp_path / "r", None, micro_overrides)
    specs = plan_protocol(ctx)
    assert len(specs) == 8 * 2
    for spec in specs:  # the LR ramps linearly from 0 to 5e-2 over the run, no decay
        with open(spec.run_dir / "metrics.csv") as f:
            lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}
        assert all(lr == pytest.approx(5e-2 * (s + 1) / 10, rel=1e-5) for s, lr in lrs.items())
    assert "Divergence rules" in text and "paper, 512 layers" in text


def test_several_seeds_report_mean_and_std(
    depth_sweep_report, tmp_path, shared_runs, micro_overrides
):
    report = run_protocol("depth-sweep", "micro", 2, tmp_path / "r", shared_runs, micro_overrides)
    text = check_report(report, n_claims=3)
    assert text.count("(n=2)") >= 4  # keel and pre_ln at both depths: mean ± std
    assert "single seed" not in text.split("## Results")[0]
    assert text.count("from record") == 0 and text.count("run dir reused") == 4
    assert text.count("trained now") == 4  # seed 0's runs are shared, their records are not


def test_jobs_train_in_worker_processes_with_the_same_results(
    depth_sweep_report, tmp_path, micro_overrides
):
    report, _ = depth_sweep_report
    again = run_protocol(
        "depth-sweep",
        "micro",
        1,
        tmp_path / "r",
        tmp_path / "runs",
        micro_overrides,
        jobs=2,
        depths=[2],
    ).read_text()
    assert again.count("trained now") == 2
    table = report.read_text().split("| sub-layers |")[1].split("\n\n")[0]
    row_2 = next(line for line in table.splitlines() if line.startswith("| 2 |"))
    assert row_2 in again  # depth 2's numbers, trained in two worker processes


def test_a_killed_worker_is_one_line_and_the_same_command_resumes(tmp_path, micro_overrides):
    """A worker killed mid-run (as the kernel's OOM killer does) ends the protocol with one
    KeelError, not a BrokenProcessPool traceback; the rerun then finishes both runs."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = multiprocessing.active_children()
            if children:
                os.kill(children[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    args = ("depth-sweep", "micro", 1, tmp_path / "r", tmp_path / "runs", micro_overrides)
    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    with pytest.raises(KeelError, match="worker process died .* run the same command again"):
        run_protocol(*args, jobs=2, depths=[2])
    killer.join()
    again = run_protocol(*args, jobs=1, depths=[2]).read_text()
    assert again.count("| 6/6 | finished |") == 2  # keel and pre_ln at depth 2


def test_grad_flow_reuses_depth_sweep_runs(
    depth_sweep_report, tmp_path, shared_runs, micro_overrides
):
    report = run_protocol("grad-flow", "micro", 1, tmp_path / "r", shared_runs, micro_overrides)
    text = check_report(report, n_claims=2 * 2 * 2)  # depths x (init, trained) x baselines
    rows = [line for line in text.split("## Runs")[1].splitlines() if line.startswith("| ")]
    assert sum("run dir reused" in r for r in rows) == 4  # keel + pre_ln at 2 depths
    # post_ln + deepnorm at 2 depths, and peri_ln + lns at max-lr's depths (2 and 4 at micro)
    assert sum("trained now" in r for r in rows) == 4 + 4
    data = json.loads((tmp_path / "r" / "grad-flow-L4.json").read_text())
    schemes = {"post_ln", "deepnorm", "pre_ln", "keel", "peri_ln", "lns"}
    assert {r["scheme"] for r in data["runs"]} == schemes
    # the heatmap is Keel's run even where peri_ln and lns were planned after it
    assert re.search(r"heatmap of keel-L4-[^:]*: \[grad-flow-L4-heatmap.png\]", text)


def test_redundancy_end_to_end(depth_sweep_report, tmp_path, shared_runs, micro_overrides):
    """Single, block and range removal plus the stream steps, kept in each run's record."""
    report = run_protocol("redundancy", "micro", 1, tmp_path / "r", shared_runs, micro_overrides)
    text = check_report(report, n_claims=1 + 2 * 2 + 1)  # first, 2 shallow per depth, trend
    assert "redundancy-L4.png" in text and "R²" in text
    records = list((tmp_path / "r" / "records").glob("*-L4-*"))
    assert len(records) == 2
    for record in records:
        data = json.loads((record / "ablation.json").read_text())
        assert [r["layer"] for r in data["single"]] == [0, 1, 2, 3]
        assert [r["layer"] for r in data["block"]] == [0, 1]
        assert [r["removed"] for r in data["range"]] == ["0-1", "1-2", "2-3"]
        assert len(data["step"]) == 4 and all(s > 0 for s in data["step"])


@pytest.mark.parametrize(
    "protocol", ["max-lr", "lr-sweep", "depth-sweep", "grad-flow", "redundancy"]
)
def test_gpu_scale_plans_use_the_papers_shapes(protocol, tmp_path):
    specs = plan_protocol(make_context(protocol, "gpu", 3, tmp_path))
    for spec in specs:
        m, r = spec.recipe.model, spec.recipe
        assert (m.d_model, m.hidden, m.n_heads, m.kv_heads) == (1024, 3072, 16, 8)
        assert r.sequences_per_step * r.data.seq_len == 1024 * 4096
        assert r.trainer.precision == "bf16-mixed" and r.optim.betas == (0.9, 0.95)
        assert not spec.finished and not spec.run_dir.exists()
    assert {s.seed for s in specs} == {0, 1, 2}
    depths = {s.depth for s in specs}
    if protocol == "max-lr":
        assert depths == {64, 512} and len(specs) == 8 * 2 * 3
        assert all(
            s.recipe.optim.lr == 5e-2
            and s.recipe.optim.warmup_steps == s.recipe.trainer.max_steps == 5000
            for s in specs
        )
    elif protocol == "lr-sweep":
        assert depths == {512} and {s.lr for s in specs} == {1.5e-3, 3e-3, 6e-3}
    else:
        assert depths == {64, 128, 512, 1024}


def test_plan_cli_and_bad_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["repro", "depth-sweep", "--scale", "gpu", "--plan", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0 and "1024" in result.output
    assert "estimate: none at this scale" in result.output
    result = runner.invoke(
        app, ["repro", "max-lr", "--plan", "--seeds", "3", "--jobs", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0 and "hybridnorm" in result.output
    assert "CPU-minutes left for 48 of 48 runs" in result.output and "--jobs 2" in result.output
    result = runner.invoke(
        app, ["repro", "max-lr", "--plan", "--seeds", "3", "--depths", "64", "--out", str(tmp_path)]
    )
    # --depths: the other depth's runs are listed but not counted
    assert result.exit_code == 0 and "CPU-minutes left for 24 of 48 runs" in result.output
    assert result.output.count("not this call") == 24
    assert not any(tmp_path.iterdir())  # a plan writes nothing
    for args, message in (
        (["nope"], "unknown protocol"),
        (["max-lr", "--scale", "tpu"], "unknown --scale"),
        (["max-lr", "--seeds", "0"], "--seeds must be at least 1"),
        (["max-lr", "--plan", "--set", "model.d_model=-1"], "d_model"),
        (["max-lr", "--depths", "16,x"], "--depths"),
        (["max-lr", "--plan", "--depths", "32"], "--depths [32] not in this plan"),
        (["max-lr", "--depths", "32", "--set", "data.corpus=/nonexistent"], "--depths"),
        (["max-lr", "--jobs", "0"], "--jobs must be at least 1"),
    ):
        result = runner.invoke(app, ["repro", *args, "--out", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output
        assert "Traceback" not in result.output


def test_progress_hears_every_training_step_then_each_run_end(tmp_path, micro_overrides):
    calls = []
    args = ("lr-sweep", "micro", 1, tmp_path / "out", tmp_path / "runs", micro_overrides)
    run_protocol(*args, on_progress=lambda what, done, total: calls.append((what, done, total)))
    specs = plan_protocol(make_context(*args))
    steps = [s.recipe.trainer.max_steps for s in specs]
    first = [done for what, done, _ in calls if what == f"training {specs[0].name}"]
    assert first == list(range(1, steps[0] + 1))  # one call per optimizer step
    ends = [done for what, done, _ in calls if what.startswith("finished ")]
    assert ends == [sum(steps[: k + 1]) for k in range(len(specs))]
    assert {total for *_, total in calls} == {sum(steps) + len(specs)}
