"""lm-eval's own `hf` model on an exported run scores the bundled tasks like `keel` does; and
registering `keel` never hides lm-eval's own models, whatever is imported first."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # lm-eval's hf model imports it


def test_hf_model_on_the_export_matches_keel(trained_run_dir, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate

    from keelctl.eval.harness import load_tasks, task_manager
    from keelctl.export import export_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # 64, its max_seq_len: keel_nextline's choices (up to 60 bytes) do not fit its seq_len 32
    folder = export_hf(trained_run_dir, tmp_path / "hf", context=64)
    tasks = ["keel_nextline", "keel_stdlib_ppl"]
    results = {}
    for model, args in (
        ("hf", f"pretrained={folder},trust_remote_code=True"),
        # rolling_context=1: windows without overlap, as lm-eval's hf model scores them
        ("keel", f"path={trained_run_dir},max_length=64,rolling_context=1"),
    ):
        out = simple_evaluate(
            model=model,
            model_args=args,
            tasks=load_tasks(tasks, task_manager(True)),
            task_manager=task_manager(True),
            limit=12,
            batch_size=4,
            device="cpu",
            log_samples=False,
        )
        results[model] = out["results"]
    hf, keel = results["hf"], results["keel"]
    assert hf["keel_nextline"]["acc,none"] == keel["keel_nextline"]["acc,none"]
    assert hf["keel_nextline"]["acc_norm,none"] == keel["keel_nextline"]["acc_norm,none"]
    for metric in ("bits_per_byte,none", "word_perplexity,none"):
        assert hf["keel_stdlib_ppl"][metric] == pytest.approx(
            keel["keel_stdlib_ppl"][metric], rel=1e-5
        )


IMPORT_ORDERS = [
    "import keelctl.eval.lm_eval_adapter",
    "import keelctl.eval.tasks",  # what the stock lm_eval does with a bundled task YAML
    "import lm_eval.api.registry, keelctl.eval.lm_eval_adapter",
]


@pytest.mark.parametrize("first", IMPORT_ORDERS)
def test_lm_eval_models_stay_visible_for_every_import_order(first):
    """lm-eval imports lm_eval.models only while its model registry is empty."""
    script = (
        f"{first}\nfrom lm_eval.api.registry import get_model\n"
        "print(get_model('dummy').__name__, get_model('hf').__name__, get_model('keel').__name__)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["DummyLM", "HFLM", "KeelLM"]
