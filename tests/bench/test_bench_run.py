"""`keelctl bench` on a tiny configuration: every field of the JSON, the PNG, the errors.
No timed assertions: only that times are positive and fields are well formed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from keelctl.bench import BenchOptions
from keelctl.cli import app
from keelctl.errors import KeelError

TINY = [
    "--schemes",
    "keel,pre_ln",
    "--depths",
    "2,4",
    "--d-model",
    "32",
    "--n-heads",
    "4",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--threads",
    "1",
]
PATH_FIELDS = {
    "step_time_s",
    "first_step_s",
    "step_time_min_s",
    "step_time_max_s",
    "tokens_per_s",
    "achieved_tflops",
    "mfu",
    "peak_mem_bytes",
    "step_times_s",
    "cpu_step_time_s",
}
ROW_FIELDS = {
    "round",
    "scheme",
    "depth_sublayers",
    "n_blocks",
    "params",
    "flops_params",
    "flops_per_token",
    "bare",
    "lightning",
    "lightning_overhead",
    "vs_pre_ln",
    "error",
}


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, ["bench", *TINY, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "depth in sub-layers" in result.output
    return out


def test_json_has_every_field_for_every_configuration(bench_json):
    doc = json.loads(bench_json.read_text())
    assert {"meta", "options", "results", "ratios"} <= doc.keys()
    assert doc["options"]["depths"] == [2, 4]
    assert "sub-layers" in doc["meta"]["depth_unit"]
    assert doc["meta"]["peak_flops"] is None  # CPU: achieved TFLOP/s only, no MFU
    rows = doc["results"]
    assert [(r["scheme"], r["depth_sublayers"]) for r in rows] == [
        ("keel", 2),
        ("pre_ln", 2),
        ("pre_ln", 4),
        ("keel", 4),
    ]  # order alternates by depth
    for r in rows:
        assert r.keys() == ROW_FIELDS and r["error"] is None
        assert r["n_blocks"] == r["depth_sublayers"] // 2
        assert 0 < r["flops_params"] < r["params"]  # the embedding table is not counted
        for path in ("bare", "lightning"):
            assert r[path].keys() == PATH_FIELDS
            assert r[path]["step_time_s"] > 0 and r[path]["tokens_per_s"] > 0
            assert len(r[path]["step_times_s"]) == 2 and r[path]["mfu"] is None
            assert r[path]["first_step_s"] > 0  # an untimed warm-up step, or the compile
            assert r[path]["peak_mem_bytes"] is None or r[path]["peak_mem_bytes"] >= 0
        assert r["lightning_overhead"] > 0 and r["vs_pre_ln"] > 0
    assert [r["vs_pre_ln"] for r in rows if r["scheme"] == "pre_ln"] == [1.0, 1.0]


def test_repeats_interleave_rounds_and_summarise_each_ratio_over_them():
    from keelctl.bench import run_bench

    opts = BenchOptions(
        schemes=["keel", "pre_ln"],
        depths=[2],
        d_model=32,
        n_heads=4,
        seq_len=8,
        batch_size=1,
        steps=1,
        warmup=0,
        threads=1,
        repeats=3,
    )
    doc = run_bench(opts)
    rows = doc["results"]
    assert [(r["round"], r["scheme"]) for r in rows] == [
        (0, "keel"),
        (0, "pre_ln"),
        (1, "pre_ln"),
        (1, "keel"),
        (2, "keel"),
        (2, "pre_ln"),
    ]  # the order of the schemes alternates from round to round
    keel = next(e for e in doc["ratios"] if e["scheme"] == "keel")
    bare = {(r["round"], r["scheme"]): r["bare"] for r in rows}
    for clock, field in (("wall", "step_time_s"), ("cpu", "cpu_step_time_s")):
        ratios = sorted(bare[i, "keel"][field] / bare[i, "pre_ln"][field] for i in range(3))
        assert keel[f"vs_pre_ln_{clock}"] == {
            "median": ratios[1],
            "min": ratios[0],
            "max": ratios[2],
            "n": 3,
        }
        assert keel[f"lightning_over_bare_{clock}"]["n"] == 3
    pre_ln = next(e for e in doc["ratios"] if e["scheme"] == "pre_ln")
    assert pre_ln["vs_pre_ln_wall"] is None and pre_ln["lightning_over_bare_cpu"]["n"] == 3


def test_ratio_summary_takes_each_ratio_within_a_round():
    from keelctl.bench.ratios import ratio_summary

    def row(round_, scheme, bare, lightning):
        times = lambda s: {"step_time_s": s, "cpu_step_time_s": s / 2}  # noqa: E731
        return {
            "round": round_,
            "scheme": scheme,
            "depth_sublayers": 8,
            "bare": times(bare),
            "lightning": lightning and times(lightning),
        }

    # The machine slows down from round to round; within a round keel costs 1.1, 1.0, 1.2x.
    rows = [
        row(0, "pre_ln", 1.0, 1.05),
        row(0, "keel", 1.1, 1.10),
        row(1, "keel", 2.0, 2.20),
        row(1, "pre_ln", 2.0, 2.00),
        row(2, "pre_ln", 4.0, None),
        row(2, "keel", 4.8, None),
    ]
    pre_ln, keel = ratio_summary(rows)  # in the order the schemes first appear
    for clock in ("wall", "cpu"):
        assert keel[f"vs_pre_ln_{clock}"] == pytest.approx(
            {"median": 1.1, "min": 1.0, "max": 1.2, "n": 3}
        )
        # Lightning/bare: 1.10/1.1 and 2.20/2.0 (round 2 has no Lightning time)
        assert keel[f"lightning_over_bare_{clock}"] == pytest.approx(
            {"median": 1.05, "min": 1.0, "max": 1.1, "n": 2}
        )
    assert pre_ln["scheme"] == "pre_ln" and pre_ln["vs_pre_ln_cpu"] is None


def test_a_png_is_written_beside_the_json(bench_json):
    png = bench_json.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_activation_checkpointing_and_bf16_run_without_lightning(tmp_path):
    from keelctl.bench import run_bench

    opts = BenchOptions(
        schemes=["keel"],
        depths=[2],
        d_model=32,
        n_heads=4,
        seq_len=8,
        batch_size=1,
        steps=1,
        warmup=0,
        precision="bf16-mixed",
        activation_checkpointing=True,
        lightning=False,
        threads=1,
    )
    row = run_bench(opts)["results"][0]
    assert row["lightning"] is None and row["lightning_overhead"] is None
    assert row["bare"]["tokens_per_s"] > 0 and row["vs_pre_ln"] is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--depths", "3"], "must be even"),
        (["--schemes", "keel,nope"], "unknown scheme"),
        (["--precision", "16"], "precision must be one of"),
        (["--depths", "a,b"], "comma-separated"),
        (["--device", "cuda"], "no CUDA device"),
        (["--repeats", "0"], "must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_options_validate_raises_keel_error():
    with pytest.raises(KeelError, match="sub-layers"):
        BenchOptions(depths=[8, 5]).validate()
