"""Offline lm-eval tasks shipped with keelctl (YAML here, data in data/, made by build.py).

    keel_stdlib_ppl   loglikelihood_rolling over held-out stdlib source (bits_per_byte, ...)
    keel_nextline     multiple choice: the true next line of held-out source among 3 (acc)
    keel_hops_k1..k4  variable tracking through k assignments, with distractors: the printed
                      digit among 10 (acc per k; keelctl/data/hops.py generates the items)

The tag `keel_offline` names the first two, the tag `keel_hops` the four hop counts. The YAMLs
read their data through `bundled_dataset` (or generate it, `hops_dataset`), so they work from
any working directory, and loading them imports the `keel` model for lm-eval: that is how the
stock `lm_eval` command finds `--model keel` when given a bundled YAML by path.
"""

from __future__ import annotations

import json
from pathlib import Path

import keelctl.eval.lm_eval_adapter  # noqa: F401  (registers model "keel" with lm-eval)
from keelctl.eval.task_names import (  # noqa: F401  (their home; imported from here too)
    BUNDLED_TAG,
    BUNDLED_TASKS,
    HOPS_TAG,
    HOPS_TASKS,
)

TASKS_DIR = Path(__file__).parent


def bundled_dataset(data_file: str, **_metadata):
    """lm-eval `custom_dataset` hook: {"test": rows of data/<data_file>}. lm-eval also passes
    the task metadata and model args as keywords; they do not change the data."""
    import datasets

    lines = (TASKS_DIR / "data" / data_file).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list([json.loads(x) for x in lines])}
    )


def hops_dataset(hops: int, **_metadata):
    """lm-eval `custom_dataset` hook: {"test": the seeded variable-tracking items with `hops`
    hops}, generated here (deterministic, a few ms) rather than shipped as data."""
    import datasets

    from keelctl.data.hops import eval_items

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(eval_items(int(hops)))})
