"""`keelctl eval` end to end, its one-line errors, and the stock `lm_eval` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.eval.tasks import TASKS_DIR


@pytest.fixture(scope="module")
def pre_ln_run_dir(model_run_dir, tmp_path_factory):
    """A second run: the same recipe with residual pre_ln (another config hash)."""
    from keelctl.config import load_recipe
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.model import build_model
    from keelctl.runs import CONFIG_YAML, Run

    recipe = load_recipe(model_run_dir / CONFIG_YAML, ["model.residual=pre_ln"])
    run_dir = tmp_path_factory.mktemp("runs") / "untrained-pre-ln"
    torch.manual_seed(1)
    Run(run_dir).save_model(build_model(recipe.model), ByteTokenizer())
    (run_dir / CONFIG_YAML).write_text((model_run_dir / CONFIG_YAML).read_text())
    return run_dir


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_eval_two_runs_table_and_json(model_run_dir, pre_ln_run_dir, tmp_path):
    out = tmp_path / "reports" / "eval.json"
    result = invoke(
        model_run_dir,
        pre_ln_run_dir,
        "--tasks",
        "keel_nextline",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--output",
        out,
    )
    assert result.exit_code == 0, result.output
    for text in ("untrained-keel", "untrained-pre-ln", "held-out bits/byte", "keel_nextline acc"):
        assert text in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["limit"] == 2 and report["date"]
    keel, pre_ln = report["runs"]
    model_json = json.loads((model_run_dir / "model.json").read_text())
    assert keel["config_hash"] == model_json["config_hash"] != pre_ln["config_hash"]
    assert keel["model_path"] == str(model_run_dir.resolve())
    assert (keel["residual"], pre_ln["residual"]) == ("keel", "pre_ln")
    ppl = keel["perplexity"]
    assert ppl["split"] == "val" and ppl["tokens"] == ppl["bytes"] > 0 and ppl["ppl"] > 1
    assert 0 <= keel["results"]["keel_nextline"]["acc,none"] <= 1
    assert keel["n-samples"]["keel_nextline"]["effective"] == 2


def test_eval_data_spec_scores_its_validation_split(model_run_dir, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("alpha beta gamma\n" * 10)
    result = invoke(
        model_run_dir, "--data", text, "--device", "cpu", "--output", tmp_path / "r.json"
    )
    assert result.exit_code == 0, result.output
    ppl = json.loads((tmp_path / "r.json").read_text())["runs"][0]["perplexity"]
    assert ppl["data"] == str(text) and 0 < ppl["bytes"] < 170  # the held-out tail only


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    return result.stderr


def test_missing_run_dir(tmp_path):
    assert "does not exist" in error_line(invoke(tmp_path / "nope", "--device", "cpu"))


def test_bad_device(model_run_dir):
    if torch.cuda.is_available():
        assert "CUDA device(s)" in error_line(invoke(model_run_dir, "--device", "cuda:99"))
    else:
        assert "CUDA is not available" in error_line(invoke(model_run_dir, "--device", "cuda"))
    assert "unknown device" in error_line(invoke(model_run_dir, "--device", "gpu0"))


def test_output_unwritable(model_run_dir, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    line = error_line(invoke(model_run_dir, "--device", "cpu", "--output", blocker / "r.json"))
    assert "--output" in line


def test_unknown_task(model_run_dir):
    line = error_line(
        invoke(model_run_dir, "--device", "cpu", "--tasks", "keel_nextline,no_such_task")
    )
    assert "no_such_task" in line and "lm_eval ls tasks" in line


def test_hub_task_offline_names_the_dataset(model_run_dir, monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    line = error_line(
        invoke(model_run_dir, "--device", "cpu", "--tasks", "arc_easy", "--limit", "1")
    )
    assert "task arc_easy" in line and "allenai/ai2_arc" in line


def test_stock_lm_eval_command_runs_model_keel(model_run_dir, tmp_path):
    """The bare `lm_eval` binary, from another directory, offline, on a bundled YAML."""
    lm_eval = Path(sys.executable).parent / "lm_eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(lm_eval),
            "--model",
            "keel",
            "--model_args",
            f"path={model_run_dir}",
            "--tasks",
            str(TASKS_DIR / "keel_nextline.yaml"),
            "--limit",
            "2",
            "--batch_size",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|keel_nextline")]
    assert table and "|acc" in table[0]


def test_wrapper_adds_the_bundled_tasks_to_the_stock_cli(monkeypatch):
    import lm_eval.__main__

    from keelctl.eval import lm_eval_cli

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["python"])
    lm_eval_cli.main(["--model", "keel", "--tasks", "keel_offline"])
    lm_eval_cli.main(["ls", "tasks", "--include_path", "mine"])
    lm_eval_cli.main(["--help"])
    assert seen == [
        ["lm-eval", "--model", "keel", "--tasks", "keel_offline", "--include_path", str(TASKS_DIR)],
        ["lm-eval", "ls", "tasks", "--include_path", "mine"],
        ["lm-eval", "--help"],
    ]


def test_eval_scores_at_the_trained_context(trained_run_dir):
    from keelctl.data import load_documents
    from keelctl.eval.perplexity import corpus_perplexity
    from keelctl.eval.runner import evaluate_runs, heldout_spec
    from keelctl.runs import Run

    (entry,) = evaluate_runs([trained_run_dir], device="cpu")["runs"]
    assert entry["context"] == 32  # data.seq_len; its max_seq_len is 64
    spec, kwargs = heldout_spec(trained_run_dir, None)
    model, tok = Run(trained_run_dir).load_model()
    docs = load_documents(spec, "val", **kwargs)
    at_32 = corpus_perplexity(model, tok, docs, max_len=32)
    assert entry["perplexity"]["nll"] == at_32["nll"]
    assert corpus_perplexity(model, tok, docs, max_len=64)["nll"] != at_32["nll"]


def test_eval_reads_the_runs_token_store_not_the_corpus_text(trained_run_dir, monkeypatch):
    from keelctl.data.corpora import Corpus
    from keelctl.eval.runner import evaluate_runs

    def no_reading(self):
        raise AssertionError("eval read the corpus text although the run's token store exists")

    monkeypatch.setattr(Corpus, "documents", no_reading)
    (entry,) = evaluate_runs([trained_run_dir], device="cpu")["runs"]
    assert entry["perplexity"]["tokens"] > 0 and entry["perplexity"]["documents"] > 0
