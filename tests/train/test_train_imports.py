"""`keelctl train` keeps the heavy optional libraries out of its process unless the recipe asks
for them (issue 29: start-up time and memory of a tiny train)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: this test process has imported everything by now.
_SCRIPT = """
import json, sys
import lightning  # imports torchmetrics, which imports matplotlib and transformers if installed

heavy = json.loads(sys.argv[1])
with_lightning = sorted(m for m in heavy if m in sys.modules)
from keelctl.cli import main

sys.argv = ["keelctl", "train", *sys.argv[2:]]
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "with_lightning": with_lightning,
                  "after_train": sorted(m for m in heavy if m in sys.modules)}))
"""
TINY_KEEL = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"
# Never needed by a train whose loggers are csv only (the evaluation, data-set, export and
# tracker libraries).
NEVER = ["lm_eval", "datasets", "wandb", "mlflow", "tensorboard", "evaluate", "sklearn"]
# Imported by Lightning itself (torchmetrics) when installed; keelctl must add none of them.
NOT_BY_KEELCTL = ["matplotlib", "matplotlib.pyplot", "transformers", "scipy", "PIL"]


def test_train_imports_no_heavy_optional_library(tmp_path, tiny_train_sets):
    args = [str(TINY_KEEL), "--run-dir", str(tmp_path / "run")]
    for override in tiny_train_sets(tmp_path / "cache", max_steps=2):
        args += ["--set", override]
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(NEVER + NOT_BY_KEELCTL), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file()
    assert not set(result["after_train"]) & set(NEVER)
    added = set(result["after_train"]) - set(result["with_lightning"])
    assert not added, f"the train path imported {sorted(added)}"


_CHECK_TASKS = """
import json, sys
from keelctl.train.evaluation import check_eval_tasks
check_eval_tasks(json.loads(sys.argv[1]))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("lm_eval", "requests"))))
"""


def test_bundled_eval_tasks_are_checked_without_lm_eval():
    """trainer.eval_tasks of bundled tasks: lm-eval (its task index lm_eval.tasks, about 100
    MB and 1-2 s; the keel model adapter and requests, 13 MiB) waits for the first evaluation
    instead of loading before step 1 (unknown names still fail before step 1:
    test_eval_in_training.py)."""
    names = ["keel_nextline", "keel_hops", "keel_offline", "keel_hops_k2"]
    out = subprocess.run(
        [sys.executable, "-c", _CHECK_TASKS, json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
