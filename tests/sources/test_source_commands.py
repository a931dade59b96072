"""ablate-layers, eval and plot-grads on transformers models mixed with keelctl runs: one
call, one figure on a normalised depth axis, each row's unit, numbers checked against
transformers' own loss and autograd."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_hf import transformers
from typer.testing import CliRunner

from keelctl.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_ablate_layers_mixes_a_run_and_transformers_models(
    model_run_dir, hf_folder, tiny_corpus, tmp_path
):
    out = tmp_path / "abl"
    llama, neox = hf_folder("llama"), hf_folder("gpt_neox")
    argv = ["ablate-layers", model_run_dir, llama, neox, "--unit", "block", "--data", tiny_corpus]
    result = invoke(*argv, "--tokens", 128, "--output-dir", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    keys = [(r["run"], r["source"], r["unit"], r["n_layers"], r["layer"]) for r in rows]
    assert keys == [
        (str(model_run_dir), "keelctl", "block", "2", ""),
        (str(model_run_dir), "keelctl", "block", "2", "0"),
        (str(model_run_dir), "keelctl", "block", "2", "1"),
        *[(llama, "transformers", "block", "3", str(i)) for i in ("", 0, 1, 2)],
        *[(neox, "transformers", "block", "3", str(i)) for i in ("", 0, 1, 2)],
    ]
    depths = [float(r["depth"]) for r in rows if r["layer"]]
    assert depths == [0.25, 0.75, *[(i + 0.5) / 3 for i in range(3)] * 2]
    for r in rows[1:]:
        if r["layer"]:
            assert 0 < float(r["block_influence"]) <= 2 and float(r["rel_update"]) > 0
    runs = json.loads((out / "ablation.json").read_text())["runs"]
    assert [(r["source"], r["scheme"], r["seq_len"]) for r in runs] == [
        ("keelctl", "keel", 64),
        ("transformers", "llama", 64),
        ("transformers", "gpt_neox", 64),
    ]
    assert all(r["tokens"] == 128 and len(r["block_influence"]) == r["n_layers"] for r in runs)


def test_sublayer_unit_removes_attention_and_mlp_separately(hf_folder, tiny_corpus, tmp_path):
    argv = ["ablate-layers", hf_folder("qwen2"), "--data", tiny_corpus, "--tokens", 64]
    result = invoke(*argv, "--output-dir", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "ablation.csv")))[1:]
    assert [(r["layer"], r["kind"], r["removed"]) for r in rows] == [
        (str(i), ("attn", "ffn")[i % 2], str(i)) for i in range(6)
    ]
    assert {r["block_influence"] for r in rows} == {""}  # measured per block only
    assert all(float(r["dppl"]) != 0 for r in rows)


def hf_nll(folder: str, docs: list[list[int]], prefix: int) -> float:
    """transformers' own mean next-token loss over whole documents, each after `prefix`."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in docs:
            x = torch.tensor([[prefix, *ids]])
            loss = model(input_ids=x, labels=x).loss.item()
            total, count = total + loss * len(ids), count + len(ids)
    return total / count


def test_eval_scores_a_transformers_model_like_its_own_loss(model_run_dir, hf_folder, tmp_path):
    corpus = tmp_path / "short"
    corpus.mkdir()
    for k in range(40):  # documents shorter than the context: one window each
        (corpus / f"d{k}.py").write_text(f"def f_{k}(x):\n    return x * {k}\n")
    llama = hf_folder("llama")
    result = invoke(
        "eval",
        model_run_dir,
        llama,
        "--data",
        corpus,
        "--device",
        "cpu",
        "--output",
        tmp_path / "eval.json",
    )
    assert result.exit_code == 0, result.output
    run, hf = json.loads((tmp_path / "eval.json").read_text())["runs"]
    assert (run["source"], hf["source"], hf["model_type"]) == ("keelctl", "transformers", "llama")
    from keelctl.data import load_documents

    tok = transformers.AutoTokenizer.from_pretrained(llama)
    texts = load_documents(str(corpus), "val", val_fraction=0.01)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert hf["perplexity"]["tokens"] == sum(map(len, docs))
    assert hf["perplexity"]["nll"] == pytest.approx(hf_nll(llama, docs, tok.bos_token_id), 1e-5)


def synthetic_run(root):
    """A run dir with config.yaml and a grads.csv of two steps (4 sub-layers)."""
    from keelctl.atomic import atomic_write_text
    from keelctl.config import RecipeConfig, dump_recipe
    from keelctl.model import ModelConfig, build_model
    from keelctl.runs import CONFIG_YAML, GRADS_CSV
    from keelctl.train.grad_recording import append_grads_csv

    cfg = ModelConfig(vocab_size=257, d_model=16, n_heads=2, n_blocks=2, max_seq_len=16)
    run = root / "run-keel"
    atomic_write_text(
        run / CONFIG_YAML, dump_recipe(RecipeConfig(name="r", model=cfg, data=dict(seq_len=16)))
    )
    for step in (0, 10):
        append_grads_csv(run / GRADS_CSV, step, build_model(cfg).sublayers, [1.0] * 4, [1.0] * 4)
    return run


def reference_stream_grads(folder: str, windows) -> list[float]:
    """sqrt(sum over windows of |dLoss/dx_in|^2) per decoder layer, by autograd on the inputs
    transformers hands each layer; Loss = mean next-token CE / number of windows."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    layers, inputs = model.transformer.h, {}
    for b, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, b=b: inputs.__setitem__(b, a[0]))
    sq = torch.zeros(len(layers), dtype=torch.float64)
    for x, y in windows:
        logits = model(input_ids=x, use_cache=False).logits
        for h in inputs.values():
            h.retain_grad()
        (F.cross_entropy(logits.flatten(0, 1), y.flatten()) / len(windows)).backward()
        sq += torch.stack([inputs[b].grad.double().square().sum() for b in range(len(layers))])
    return sq.sqrt().tolist()


def test_plot_grads_measures_transformers_blocks_beside_a_run(hf_folder, tiny_corpus, tmp_path):
    from keelctl.analysis.ablation import eval_batches, eval_tokens
    from keelctl.config import DataConfig
    from keelctl.sources import open_source

    gpt2, run, js = hf_folder("gpt2"), synthetic_run(tmp_path), tmp_path / "g.json"
    argv = ["plot-grads", run, gpt2, "--data", tiny_corpus, "--batches", 2, "--json", js]
    result = invoke(*argv, "--output", tmp_path / "g.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").stat().st_size > 0 and (tmp_path / "g-heatmap.png").exists()
    curves = json.loads(js.read_text())["runs"]
    assert [(c["name"], c["unit"], c["step"]) for c in curves] == [
        ("run-keel", "sublayer", 0),
        ("run-keel", "sublayer", 10),
        (gpt2.rsplit("/", 1)[-1], "block", None),
    ]
    source = open_source(gpt2)
    tokens = eval_tokens(DataConfig(corpus=str(tiny_corpus)), source.tokenizer)
    windows = list(eval_batches(tokens, source.context, 2 * source.context, 1))
    want = reference_stream_grads(gpt2, windows)
    assert curves[-1]["stream_grad_norm"] == pytest.approx(want, rel=1e-5)


def test_eval_runs_lm_eval_tasks_on_a_transformers_model(hf_folder, tiny_corpus, tmp_path):
    argv = ["eval", hf_folder("qwen3"), "--data", tiny_corpus, "--tasks", "keel_nextline"]
    result = invoke(*argv, "--limit", 3, "--device", "cpu", "--output", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "e.json").read_text())["runs"]
    assert entry["n-samples"]["keel_nextline"]["effective"] == 3
    assert 0 <= entry["results"]["keel_nextline"]["acc,none"] <= 1
