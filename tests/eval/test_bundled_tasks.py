"""The bundled offline tasks: generator properties, committed data, and the harness on them."""

from __future__ import annotations

import json
import math

import pytest

from keelctl.eval.tasks import (
    BUNDLED_TAG,
    BUNDLED_TASKS,
    HOPS_TAG,
    TASKS_DIR,
    bundled_dataset,
)
from keelctl.eval.tasks.build import nextline_items, rolling_items

DOCS = [
    "import os\n\n\ndef first(path):\n    name = os.path.basename(path)\n"
    "    stem = name.split('.')[0]\n    return stem.upper()\n",
    "class Queue:\n    def __init__(self):\n        self.items = []\n\n"
    "    def put(self, item):\n        self.items.append(item)\n        return len(self.items)\n",
    "for row in table:\n    if row is None:\n        continue\n    total += row.value\n"
    "    count += 1\nprint(total / count)\n",
]


def test_nextline_items_are_true_next_lines_among_other_files():
    items = nextline_items(DOCS, 6, seed=3)
    assert items == nextline_items(DOCS, 6, seed=3)  # deterministic
    assert len(items) == 6
    for item in items:
        true = item["choices"][item["label"]]
        home = [d for d in DOCS if item["context"] + true + "\n" in d]
        assert home, "context + answer must be a passage of a source file"
        assert len(set(item["choices"])) == 3
        for other in item["choices"]:
            if other != true:
                assert not any(other + "\n" in d for d in home)


def test_rolling_items_cover_the_documents_in_pieces():
    items = rolling_items(DOCS, 100, max_chars=40)
    assert all(len(i["text"]) <= 40 for i in items)
    for doc in DOCS:
        assert "".join(i["text"] for i in items if i["text"] in doc) == doc


def test_committed_data_is_small_and_well_formed():
    files = sorted((TASKS_DIR / "data").glob("*.jsonl"))
    assert [f.name for f in files] == ["keel_nextline.jsonl", "keel_stdlib_ppl.jsonl"]
    assert sum(f.stat().st_size for f in files) < 200_000
    rows = bundled_dataset("keel_nextline.jsonl")["test"]
    assert len(rows) == 200
    assert all(0 <= r["label"] < 3 and len(r["choices"]) == 3 for r in rows)
    assert all(len(c) <= 60 for r in rows for c in r["choices"])  # fits a 64-token context
    texts = [json.loads(x)["text"] for x in (files[1]).read_text().splitlines()]
    assert len(texts) == 40 and all(0 < len(t) <= 1500 for t in texts)


def test_bundled_index_knows_tasks_and_tag():
    from keelctl.eval.harness import task_manager

    assert set(task_manager(True).all_tasks) == {*BUNDLED_TASKS, BUNDLED_TAG, HOPS_TAG}


def test_simple_evaluate_on_bundled_tasks_returns_numbers(model_run_dir):
    from lm_eval import simple_evaluate

    from keelctl.eval.harness import task_manager
    from keelctl.eval.lm_eval_adapter import KeelLM

    lm = KeelLM(path=str(model_run_dir), device="cpu", batch_size=8)
    out = simple_evaluate(
        model=lm, tasks=[BUNDLED_TAG], task_manager=task_manager(True), limit=3, num_fewshot=1
    )
    nextline, ppl = out["results"]["keel_nextline"], out["results"]["keel_stdlib_ppl"]
    assert 0 <= nextline["acc,none"] <= 1 and 0 <= nextline["acc_norm,none"] <= 1
    # An untrained byte model is near uniform over 257 ids: about log2(257) = 8 bits per byte.
    assert ppl["bits_per_byte,none"] == pytest.approx(math.log2(257), abs=0.3)
    assert out["n-shot"] == {"keel_nextline": 1, "keel_stdlib_ppl": 1}
    assert out["n-samples"]["keel_nextline"] == {"original": 200, "effective": 3}
