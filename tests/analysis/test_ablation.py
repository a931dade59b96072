"""keelctl ablate-layers: removal == running the remaining sub-layers, cached == naive,
outputs, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from keelctl.analysis.ablation import (
    COLUMNS,
    RunAblation,
    parse_layers,
    plan_removals,
    write_outputs,
)
from keelctl.analysis.plots import AblationCurve, ablation_figure
from keelctl.analysis.removal import removal_losses
from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.model import RESIDUALS, ModelConfig, build_model

N_BLOCKS = 3  # 6 sub-layers


def tiny_model(residual: str):
    """float64; mix_ln gets 1 Post-LN and 2 Pre-LN blocks; init_std 0.5 so that every
    sub-layer visibly changes the output (at 0.02 an untrained one barely does)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual=residual,
        vocab_size=31,
        d_model=16,
        n_heads=2,
        n_blocks=N_BLOCKS,
        max_seq_len=16,
        mix_ln_fraction=0.34,
        init_std=0.5,
    )
    return build_model(cfg).double().eval()


def batches(n: int = 2):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 31, (n, 3, 13), generator=g)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def reference_loss(model, data, removed: set[int]) -> float:
    """Independent path: embedding, every sub-layer not in `removed` in order, head."""
    nll, count = 0.0, 0
    for x, y in data:
        h = model.tok_emb(x)
        for i, sub in enumerate(model.sublayers):
            if i not in removed:
                h = sub(h)
        h = model.norm_f(h) if model.norm_f is not None else h
        nll += F.cross_entropy(model.head(h).flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return nll / count


@pytest.mark.parametrize("residual", RESIDUALS)
def test_removing_a_sublayer_equals_running_the_remaining_ones(residual):
    model, data = tiny_model(residual), batches()
    removals = plan_removals(model.config.n_sublayers, "sublayer")
    assert [(r.layer, r.kind, r.start, r.stop) for r in removals] == [
        (i, sub.kind, i, i + 1) for i, sub in enumerate(model.sublayers)
    ]
    with torch.no_grad():
        full, losses, _ = removal_losses(model, data, removals)
        assert full == pytest.approx(reference_loss(model, data, set()), rel=1e-12)
        for i, loss in enumerate(losses):
            assert loss == pytest.approx(reference_loss(model, data, {i}), rel=1e-12)
    assert all(abs(loss - full) > 1e-6 for loss in losses)  # every removal changes the output


@pytest.mark.parametrize(
    "unit,range_size,removed",
    [
        ("block", 1, [{0, 1}, {2, 3}, {4, 5}]),
        ("block", 2, [{0, 1, 2, 3}, {2, 3, 4, 5}]),
        ("sublayer", 3, [{0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}]),
    ],
)
def test_blocks_and_ranges_remove_every_sublayer_they_span(unit, range_size, removed):
    model, data = tiny_model("keel"), batches()
    removals = plan_removals(model.config.n_sublayers, unit, range_size=range_size)
    assert [set(range(r.start, r.stop)) for r in removals] == removed
    assert {r.kind for r in removals} == {"block" if range_size == 1 else "range"}
    with torch.no_grad():
        _, losses, _ = removal_losses(model, data, removals)
        for loss, skip in zip(losses, removed, strict=True):
            assert loss == pytest.approx(reference_loss(model, data, skip), rel=1e-12)


@pytest.mark.parametrize(
    "residual,unit,range_size",
    [
        ("keel", "sublayer", 1),
        ("pre_ln", "sublayer", 1),
        ("keel", "block", 1),
        ("keel", "sublayer", 2),
    ],
)
def test_cached_path_equals_naive_path_with_fewer_sublayer_passes(residual, unit, range_size):
    model, data = tiny_model(residual), batches()
    removals = plan_removals(model.config.n_sublayers, unit, range_size=range_size)
    steps = []
    cached = removal_losses(model, data, removals, on_step=lambda d, t: steps.append((d, t)))
    naive = removal_losses(model, data, removals, method="naive")
    assert cached[0] == pytest.approx(naive[0], rel=1e-12)
    assert cached[1] == pytest.approx(naive[1], rel=1e-12)
    L = 2 * N_BLOCKS
    assert cached[2] == len(data) * (L + sum(L - r.stop for r in removals))
    assert naive[2] == len(data) * (L + sum(L - (r.stop - r.start) for r in removals))
    assert steps[-1] == (len(steps), len(data) * (len(removals) + 1))


def test_parse_layers_and_its_errors():
    assert parse_layers("0-2, 5,1", 8, "sublayer") == [0, 1, 2, 5]
    for spec, words in [
        ("3-1", "backwards"),
        ("a", "not N or N-M"),
        ("2-8", "out of range"),
        ("", "not N or N-M"),
    ]:
        with pytest.raises(KeelError, match=words):
            parse_layers(spec, 8, "sublayer")
    model = tiny_model("keel")
    assert [r.layer for r in plan_removals(model.config.n_sublayers, "block", "0,2")] == [0, 2]
    with pytest.raises(KeelError, match="runs past the last block"):
        plan_removals(model.config.n_sublayers, "block", "2", range_size=2)
    with pytest.raises(KeelError, match="exceeds"):
        plan_removals(model.config.n_sublayers, "block", range_size=4)


def test_outputs_have_the_stated_columns(tmp_path):
    model, data = tiny_model("keel"), batches()
    removals = plan_removals(model.config.n_sublayers, "sublayer", "1-3")
    full, losses, passes = removal_losses(model, data, removals)
    res = RunAblation(
        "runs/x",
        "keel",
        6,
        "sublayer",
        full,
        removals,
        losses,
        {"tokens": 72, "sublayer_passes": passes},
    )
    paths = write_outputs([res], tmp_path, threshold=0.01)
    assert [p.name for p in paths] == ["ablation.csv", "ablation.json", "ablation.png"]
    with open(tmp_path / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["layer"], r["kind"]) for r in rows] == [
        ("", "full"),
        ("1", "ffn"),
        ("2", "attn"),
        ("3", "ffn"),
    ]
    for row, loss in zip(rows[1:], losses, strict=True):
        assert float(row["dloss"]) == pytest.approx(loss - full)
        assert float(row["dppl"]) == pytest.approx(float(row["ppl"]) - float(rows[0]["ppl"]))
    out = json.loads((tmp_path / "ablation.json").read_text())
    assert out["columns"] == list(COLUMNS) and len(out["rows"]) == 4
    run = out["runs"][0]
    expected = sum(float(r["rel_dppl"]) > 0.01 for r in rows[1:])
    assert run["effective_depth"] == expected and run["evaluated"] == 3
    assert run["sublayer_passes"] == passes and run["full_loss"] == pytest.approx(full)
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_uses_relative_depth_and_abs_dppl_when_depths_differ():
    curves = [
        AblationCurve("a", [0, 1, 2, 3], [100.0, -0.5, 0.0, 2.0], 4, threshold=0.1),
        AblationCurve("b", [0, 1], [50.0, 1.0], 2),
    ]
    ax = ablation_figure(curves, unit="sublayer").axes[0]
    assert "normalised depth" in ax.get_xlabel() and ax.get_yscale() == "log"
    a, hollow = ax.lines[0], ax.lines[1]
    assert list(a.get_xdata()) == [0.125, 0.375, 0.625, 0.875]
    assert list(a.get_ydata()) == [100.0, 0.5, 1e-4, 2.0]  # |dPPL|, floor 1e-4
    assert list(hollow.get_ydata()) == [0.5] and hollow.get_markerfacecolor() == "white"
    same = ablation_figure(curves[:1], unit="block").axes[0]
    assert list(same.lines[0].get_xdata()) == [0, 1, 2, 3] and "block" in same.get_xlabel()


def test_cli_end_to_end_on_a_run_dir(model_run_dir, tmp_path):
    out = tmp_path / "abl"
    result = CliRunner().invoke(
        app,
        [
            "ablate-layers",
            str(model_run_dir),
            "--unit",
            "block",
            "--tokens",
            "128",
            "--output-dir",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["layer"], r["kind"], r["unit"]) for r in rows] == [
        ("", "full", "block"),
        ("0", "block", "block"),
        ("1", "block", "block"),
    ]
    assert json.loads((out / "ablation.json").read_text())["runs"][0]["tokens"] == 128
    assert "effective depth" in result.stdout


def test_cli_data_overrides_the_corpus_for_runs_of_different_depth(
    model_run_dir, tiny_corpus, tmp_path
):
    """A run without config.yaml needs --data; with it both runs see the same windows."""
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.runs import Run

    deeper = tmp_path / "deeper"
    cfg = ModelConfig(residual="pre_ln", d_model=16, n_heads=2, n_blocks=3, max_seq_len=64)
    Run(deeper).save_model(build_model(cfg), ByteTokenizer())
    missing = CliRunner().invoke(app, ["ablate-layers", str(model_run_dir), str(deeper)])
    assert missing.exit_code == 2 and "pass --data SPEC" in missing.stderr
    argv = [
        "ablate-layers",
        str(model_run_dir),
        str(deeper),
        "--data",
        str(tiny_corpus),
        "--tokens",
        "128",
        "--output-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "out" / "ablation.json").read_text())["runs"]
    assert [(r["scheme"], r["n_sublayers"], r["tokens"], r["seq_len"]) for r in runs] == [
        ("keel", 4, 128, 64),
        ("pre_ln", 6, 128, 64),
    ]


@pytest.mark.parametrize(
    "args,words",
    [
        (["--unit", "head"], "unknown --unit 'head'"),
        (["--layers", "9"], "block 9 is out of range"),
        (["--layers", "1-x"], "bad --layers"),
        (["--range-size", "0"], "--range-size must be at least 1"),
    ],
)
def test_cli_errors_are_one_line_exit_2(model_run_dir, tmp_path, args, words):
    argv = [
        "ablate-layers",
        str(model_run_dir),
        "--unit",
        "block",
        *args,
        "--output-dir",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert words in result.stderr
    assert not (tmp_path / "ablation.csv").exists()


def test_cli_missing_run_dir_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["ablate-layers", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr
