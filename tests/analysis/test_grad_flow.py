"""Gradient flow: the probe and the callback against plain autograd, grads.csv, the command
(the theory: tests/model/test_grad_theory.py)."""

from __future__ import annotations

import csv
import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from keelctl.analysis import grad_flow
from keelctl.atomic import atomic_write_text
from keelctl.cli import app
from keelctl.config import RecipeConfig, dump_recipe
from keelctl.model import ModelConfig, build_model
from keelctl.model.checkpointing import apply_activation_checkpointing
from keelctl.runs import CONFIG_YAML, GRADS_CSV
from keelctl.train.grad_recording import GRADS_COLUMNS, GradFlowCallback, append_grads_csv

SMALL = dict(vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=3, max_seq_len=32)
PNG_SHAPE = (450, 1200)  # GRAD_FIGSIZE (12 x 4.5 in) at GRAD_DPI 100


def direct_norms(model, x, y):
    """Reference: a manual pass over model.sublayers, then torch.autograd.grad with respect to
    every sub-layer input and parameter (no hooks, no keelctl measuring code)."""
    h, inputs = model.embed(x), []
    for sub in model.sublayers:
        inputs.append(h)
        h = sub(h)
    loss = F.cross_entropy(model.logits(h).flatten(0, 1), y.flatten())
    params = [list(sub.parameters()) for sub in model.sublayers]
    grads = torch.autograd.grad(loss, inputs + [p for ps in params for p in ps])
    stream = [g.norm().item() for g in grads[: len(inputs)]]
    rest = iter(grads[len(inputs) :])
    param = [math.sqrt(sum(next(rest).square().sum().item() for _ in ps)) for ps in params]
    return param, stream


def tokens(n, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 257, (n, t + 1), generator=g)
    return x[:, :-1], x[:, 1:]


@pytest.mark.parametrize("scheme", ["post_ln", "pre_ln", "keel", "deepnorm"])
def test_measurement_equals_autograd_on_the_concatenated_batch(scheme):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, residual=scheme))
    x, y = tokens(4)
    # Two micro-batches of 2 measure the same step as one batch of 4 (equal-size micro-batches).
    param, stream = grad_flow.measure_grad_flow(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    want_param, want_stream = direct_norms(model, x, y)
    assert param == pytest.approx(want_param, rel=1e-4)
    assert stream == pytest.approx(want_stream, rel=1e-4)
    assert len(stream) == model.config.n_sublayers


def test_measurement_under_activation_checkpointing_counts_each_input_once():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, residual="keel"))
    x, y = tokens(2)
    want = direct_norms(model, x, y)
    apply_activation_checkpointing(model)  # recomputes sub-layer inputs during backward
    got = grad_flow.measure_grad_flow(model, [(x, y)])
    assert got[0] == pytest.approx(want[0], rel=1e-4)
    assert got[1] == pytest.approx(want[1], rel=1e-4)


class TinyLM(L.LightningModule):
    """lr = 0, so every step's gradient is taken at the initial weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.model = build_model(cfg)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(module, x, y, callback, max_steps):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=2,
        gradient_clip_val=1e-3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_callback_records_accumulated_unclipped_gradients_and_appends(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL, residual="post_ln")
    module = TinyLM(cfg)
    path = tmp_path / GRADS_CSV
    x, y = tokens(20)
    fit(module, x[:8], y[:8], GradFlowCallback(every_n_steps=1, path=path), max_steps=2)
    rows = read_rows(path)
    assert tuple(rows[0]) == GRADS_COLUMNS and len(rows) == 1 + 2 * cfg.n_sublayers
    for step in (0, 1):  # step k = micro-batches 2k, 2k+1 = sequences 4k..4k+3
        want_param, want_stream = direct_norms(
            module.model, x[4 * step : 4 * step + 4], y[4 * step : 4 * step + 4]
        )
        got = [r for r in rows[1:] if r[0] == str(step)]
        assert [(r[1], r[2], r[3]) for r in got] == [
            (str(i), str(i // 2), "attn" if i % 2 == 0 else "ffn") for i in range(6)
        ]
        # Read before clipping: the clip at 1e-3 would have capped the total norm.
        assert [float(r[4]) for r in got] == pytest.approx(want_param, rel=1e-4)
        assert [float(r[5]) for r in got] == pytest.approx(want_stream, rel=1e-4)
    assert sum(p**2 for p in want_param) > 1e-3**2

    # A second (resumed) fit appends without a header: every 3 steps plus the last of 5.
    fit(module, x, y, GradFlowCallback(every_n_steps=3, path=path), max_steps=5)
    rows = read_rows(path)
    assert sum(r == list(GRADS_COLUMNS) for r in rows) == 1
    assert [r[0] for r in rows[1::6]] == ["0", "1", "0", "3", "4"]
    write_config(tmp_path, cfg)
    history = grad_flow.read_grads(tmp_path)
    assert history.steps == [0, 1, 3, 4]  # step 0 twice: the later rows win
    assert history.stream_grad_norm.shape == (4, 6)


def write_config(run, cfg):
    recipe = RecipeConfig(name=run.name, model=cfg, data=dict(seq_len=16))
    atomic_write_text(run / CONFIG_YAML, dump_recipe(recipe))


def synthetic_run(root, steps=(0, 10, 20), scheme="keel"):
    cfg = ModelConfig(**SMALL, residual=scheme)
    run = root / f"run-{scheme}"
    write_config(run, cfg)
    subs = build_model(cfg).sublayers
    for s in steps:
        append_grads_csv(
            run / GRADS_CSV, s, subs, [0.1 * (s + 1)] * 6, [2.0 ** (5 - i) for i in range(6)]
        )
    return run


def invoke(*args):
    return CliRunner().invoke(app, ["plot-grads", *map(str, args)])


def test_plot_grads_on_runs_writes_pngs_and_json(tmp_path):
    keel, post = synthetic_run(tmp_path), synthetic_run(tmp_path, (0, 5), "post_ln")
    out, js = tmp_path / "g.png", tmp_path / "g.json"
    result = invoke(keel, post, "--steps", "0,last", "--output", out, "--json", js)
    assert result.exit_code == 0, result.output
    for png in (out, tmp_path / "g-heatmap.png"):
        assert png.stat().st_size > 0 and imread(png).shape[:2] == PNG_SHAPE
    runs = json.loads(js.read_text())["runs"]
    assert [(r["name"], r["scheme"], r["step"]) for r in runs] == [
        ("run-keel", "keel", 0),
        ("run-keel", "keel", 20),
        ("run-post_ln", "post_ln", 0),
        ("run-post_ln", "post_ln", 5),
    ]
    first = runs[0]
    assert list(first) == [
        "name",
        "scheme",
        "n_sublayers",
        "unit",
        "step",
        "param_grad_norm",
        "stream_grad_norm",
        "bottom_top_ratio",
    ]
    assert first["n_sublayers"] == 6 and first["stream_grad_norm"] == [32, 16, 8, 4, 2, 1]
    assert first["bottom_top_ratio"] == 32
    assert runs[1]["param_grad_norm"] == [pytest.approx(2.1)] * 6
    assert "run-keel" in result.output and "32" in result.output
    assert [h.name for h in grad_flow.read_runs([keel, keel])] == ["run-keel", "run-keel-2"]


def test_plot_grads_at_init_end_to_end(tmp_path, tiny_corpus):
    recipes = []
    for scheme in ("keel", "post_ln"):
        recipe = RecipeConfig(
            name=scheme,
            model={**SMALL, "n_blocks": 2, "residual": scheme},
            data=dict(
                corpus=str(tiny_corpus),
                seq_len=32,
                batch_size=8,
                val_fraction=0.1,
                cache_dir=str(tmp_path / "cache"),
            ),
        )
        recipes.append(tmp_path / f"{scheme}.yaml")
        atomic_write_text(recipes[-1], dump_recipe(recipe))
    out, js = tmp_path / "init.png", tmp_path / "init.json"
    result = invoke(
        "--at-init",
        *recipes,
        "--set",
        "data.batch_size=2",
        "--batches",
        "2",
        "-o",
        out,
        "--json",
        js,
    )
    assert result.exit_code == 0, result.output
    assert imread(out).shape[:2] == PNG_SHAPE and not (tmp_path / "init-heatmap.png").exists()
    runs = json.loads(js.read_text())["runs"]
    assert [(r["name"], r["scheme"], r["step"], r["n_sublayers"]) for r in runs] == [
        ("keel", "keel", 0, 4),
        ("post_ln", "post_ln", 0, 4),
    ]
    # Same numbers as plain autograd on the same fresh model and the same 2 x 2 sequences.
    from keelctl.config import load_recipe

    recipe = load_recipe(recipes[0], ["data.batch_size=2"])
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model)
    (x1, y1), (x2, y2) = grad_flow.recipe_batches(recipe, 2)
    param, stream = direct_norms(model, torch.cat([x1, x2]), torch.cat([y1, y2]))
    assert runs[0]["param_grad_norm"] == pytest.approx(param, rel=1e-4)
    assert runs[0]["stream_grad_norm"] == pytest.approx(stream, rel=1e-4)
    assert runs[0]["bottom_top_ratio"] == pytest.approx(stream[0] / stream[-1], rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{untrained}"], "grads.csv is missing"),
        (["{run}", "--steps", "0,abc"], "--steps expects"),
        (["{run}", "--steps", "7"], "step 7 is not recorded"),
        (["{run}", "--output", "{tmp}/g.jpg"], "must end in .png"),
        (["{run}", "--set", "model.n_blocks=2"], "--at-init only"),
        (["--at-init", "{tmp}/nope.yaml"], "not found"),
    ],
)
def test_plot_grads_errors_are_one_line(tmp_path, model_run_dir, args, message):
    run = synthetic_run(tmp_path)
    names = dict(missing=tmp_path / "nope", untrained=model_run_dir, run=run, tmp=tmp_path)
    result = invoke(*[a.format(**names) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.output
