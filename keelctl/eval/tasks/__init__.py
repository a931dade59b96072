"""Offline lm-eval tasks shipped with keelctl (YAML here, data in data/, made by build.py).

    keel_stdlib_ppl   loglikelihood_rolling over held-out stdlib source (bits_per_byte, ...)
    keel_nextline     multiple choice: the true next line of held-out source among 3 (acc)

The tag `keel_offline` names both. The YAMLs read their data through `bundled_dataset`, so they
work from any working directory, and loading them imports the `keel` model for lm-eval: that
is how the stock `lm_eval` command finds `--model keel` when given a bundled YAML by path.
"""

from __future__ import annotations

import json
from pathlib import Path

import keelctl.eval.lm_eval_adapter  # noqa: F401  (registers model "keel" with lm-eval)

TASKS_DIR = Path(__file__).parent
BUNDLED_TASKS = ("keel_stdlib_ppl", "keel_nextline")
BUNDLED_TAG = "keel_offline"


def bundled_dataset(data_file: str, **_metadata):
    """lm-eval `custom_dataset` hook: {"test": rows of data/<data_file>}. lm-eval also passes
    the task metadata and model args as keywords; they do not change the data."""
    import datasets

    lines = (TASKS_DIR / "data" / data_file).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list([json.loads(x) for x in lines])}
    )
