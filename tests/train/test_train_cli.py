"""`keelctl train` end to end on a tiny recipe: the loss falls and every output is usable."""

from __future__ import annotations

import csv
import json

import torch
from typer.testing import CliRunner

import keelctl
from keelctl.cli import app
from keelctl.config import load_recipe
from keelctl.data import ValWindows, prepare_tokens


def rows(path, column):
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r[column])) for r in csv.DictReader(f) if r.get(column)]


def test_cli_trains_tiny_keel_into_default_run_dir(tmp_path, tiny_args, tiny_recipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *tiny_args()])
    assert result.exit_code == 0, result.output + result.stderr

    run = tmp_path / "runs" / "tiny-keel"  # the recipe's name
    for name in (
        "config.yaml",
        "metrics.csv",
        "grads.csv",
        "hparams.yaml",
        "model.json",
        "model.safetensors",
        "summary.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (run / name).is_file(), name

    train_loss = rows(run / "metrics.csv", "train_loss")
    assert [s for s, _ in train_loss] == list(range(30))  # every step, log_every 1
    first, last = [v for _, v in train_loss[:5]], [v for _, v in train_loss[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 1.0  # from ~ln(257) = 5.5 down
    val = rows(run / "metrics.csv", "val_loss")
    assert [s for s, _ in val] == [9, 19, 29]  # every 10 steps; logged at the step's index
    assert val[-1][1] < val[0][1]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["tokens_seen"] == 30 * 4 * 32
    assert summary["n_sublayers"] == 4 and summary["n_blocks"] == 2
    assert "sub-layers" in summary["units"]["depth"]
    assert abs(summary["final_val_loss"] - val[-1][1]) < 1e-6
    assert "final val loss" in result.stdout and "4 sub-layers" in result.stdout

    # The resolved recipe reproduces the run's settings.
    assert load_recipe(run / "config.yaml") == tiny_recipe()

    # The exported model alone (no Lightning) gives the run's final validation loss.
    model, tokenizer = keelctl.load_model(run)
    cfg = load_recipe(run / "config.yaml")
    data = prepare_tokens(
        cfg.data.corpus,
        val_fraction=cfg.data.val_fraction,
        cache_dir=cfg.data.cache_dir,
        tokenizer=tokenizer,
    )
    windows = ValWindows(data.val, cfg.data.seq_len, cfg.data.val_tokens)
    x = torch.stack([windows[i][0] for i in range(len(windows))])
    y = torch.stack([windows[i][1] for i in range(len(windows))])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert abs(loss.item() - summary["final_val_loss"]) < 1e-4
    assert cfg.model == model.config

    # The tokenizer travels in the checkpoint, which loads without unpickling code.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["keelctl_tokenizer"] == {"kind": "byte"} and ckpt["global_step"] == 30


def test_compare_runs_prints_table_and_writes_plot(trained_run_dir, tmp_path):
    png = tmp_path / "img" / "loss.png"
    result = CliRunner().invoke(app, ["compare-runs", str(trained_run_dir), "--plot", str(png)])
    assert result.exit_code == 0, result.output + result.stderr
    assert "tiny-keel-test" in result.stdout and "lowest final validation loss" in result.stdout
    assert "in-training eval" not in result.stdout  # a run without evaluations: no eval columns
    assert png.stat().st_size > 10_000
