"""`keelctl repro precision` at micro scale, end to end: the fp32 runs are depth-sweep's, the
variants' recipes build the rounding models, the claims and figures are reported; the plan and
bad arguments."""

from __future__ import annotations

import pytest
import torch
from test_protocols import check_report
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.model import build_model
from keelctl.repro import make_context, plan_protocol
from keelctl.repro.precision import VARIANTS, planned
from keelctl.repro.scales import get_scale

MICRO = get_scale("micro")

MAIN, DEEP = MICRO.design_depths[-1], MICRO.map_trains_depths[0]


@pytest.fixture(scope="module")
def precision_report(micro_overrides, shared_runs, depth_sweep_report):
    """precision at micro scale, 1 seed, beside depth-sweep's report (its sibling records)."""
    out = depth_sweep_report[0].parent.parent / "precision"
    args = ["repro", "precision", "--scale", "micro", "--out", str(out)]
    args += ["--runs-dir", str(shared_runs)]
    for item in micro_overrides:
        args += ["--set", item]
    return out / "report.md", CliRunner().invoke(app, args)


def test_precision_end_to_end(precision_report):
    report, result = precision_report
    assert result.exit_code == 0, result.output
    text = check_report(report, n_claims=5)  # 2 depths x 2 variants, + the Pre-LN control
    table = text.split("## Results")[1].split("![")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    cells = {tuple(r.split(" | ")[:3]) for r in rows[1:]}
    assert cells == {
        ("| keel", str(MAIN), "fp32"),
        ("| keel", str(MAIN), "bf16-gains"),
        ("| keel", str(MAIN), "bf16-stream"),
        ("| pre_ln", str(MAIN), "fp32"),
        ("| pre_ln", str(MAIN), "bf16-stream"),
        ("| keel", str(DEEP), "fp32"),
        ("| keel", str(DEEP), "bf16-gains"),
        ("| keel", str(DEEP), "bf16-stream"),
    }
    assert "--set model.stream_dtype=bf16" in text and "--set model.norm_dtype=bf16" in text
    assert "precision-val-loss.png" in text and "precision-stream-grads.png" in text
    assert "a bf16 stream raises Keel's validation loss more than Pre-LN's" in text


def test_fp32_runs_are_depth_sweeps_and_variants_build_their_rounding(
    precision_report, shared_runs, micro_overrides
):
    depth_plan = plan_protocol(
        make_context("depth-sweep", "micro", 1, "x", shared_runs, micro_overrides)
    )
    plan = planned(make_context("precision", "micro", 1, "y", shared_runs, micro_overrides))
    shared = {s.run_dir for s in depth_plan}
    for variant, spec in plan:
        # at the main depth the fp32 run is depth-sweep's (run dir, hash, record); micro's
        # depth-sweep stops below the deep depth
        assert (spec.run_dir in shared) == (variant == "fp32" and spec.depth == MAIN), spec.name
        model = build_model(spec.recipe.model)
        keys = VARIANTS[variant][1]
        rounds_gains = torch.bfloat16 if "norm_dtype" in keys else None
        assert model.config.stream_dtype == keys.get("stream_dtype", "fp32")
        assert model.sublayers[-1].stream_dtype == (
            torch.bfloat16 if "stream_dtype" in keys else None
        )
        if spec.scheme == "keel":
            assert model.sublayers[-1].norm_out.gain_dtype == rounds_gains


def test_plan_prints_cpu_minutes_and_bad_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["repro", "precision", "--plan", "--seeds", "2", "--out", str(tmp_path)]
    )
    # cpu: 256 sub-layers, keel 2 seeds x 3 variants + pre_ln 2 variants; 1024, keel 3 variants
    assert result.exit_code == 0, result.output
    assert "CPU-minutes left for 11 of 11 runs" in result.output
    assert not any(tmp_path.iterdir())  # a plan writes nothing
    result = runner.invoke(
        app, ["repro", "precision", "--depths", "64", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--depths [64] not in this plan" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
