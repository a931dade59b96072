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
    assert {"meta", "options", "results"} <= doc.keys()
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
