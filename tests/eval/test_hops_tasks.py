"""The variable-tracking family: programs checked by Python itself, hop counts by following the
assignments back, the lm-eval tasks per hop count, and the builtin:hops training corpus."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from keelctl.data.corpora import load_splits, open_corpus
from keelctl.data.hops import hops_documents, program
from keelctl.errors import KeelError
from keelctl.eval.tasks import HOPS_TAG, HOPS_TASKS, hops_dataset

ASSIGN = re.compile(r"^>>> ([a-z]) = ([a-z0-9])$")


def run_session(text: str) -> str:
    """What the Python interpreter prints for the session."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec("\n".join(line.removeprefix(">>> ") for line in text.splitlines()), {})
    return out.getvalue().strip()


def hops_back(text: str) -> int:
    """Assignments on the printed variable's chain: follow copies back to a literal."""
    lines = text.splitlines()
    target = re.fullmatch(r">>> print\(([a-z])\)", lines[-1])[1]
    value = dict(ASSIGN.match(line).groups() for line in lines[:-1])
    count = 1
    while not value[target].isdigit():
        target, count = value[target], count + 1
    return count


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_items_print_their_label_through_k_hops_with_distractors(hops):
    rows = hops_dataset(hops)["test"]
    assert len(rows) == 200 and list(rows) == list(hops_dataset(hops)["test"])  # seeded
    for row in rows:
        text = row["context"]
        assert run_session(text) == row["choices"][row["label"]] == str(row["label"])
        assert hops_back(text) == hops
        assert len(text.splitlines()) == hops + 4 + 1  # chain, 4 distractors, print
        literals = re.findall(r"= (\d)$", text, re.M)
        assert len(set(literals)) == len(literals)  # one chain per digit
    assert len({row["context"] for row in rows}) > 190


def test_distractor_copies_and_interleaving_occur():
    import random

    rng = random.Random(0)
    texts = [program(rng, 3)[0] for _ in range(200)]
    copies = [len(re.findall(r"= [a-z]$", t, re.M)) for t in texts]
    assert max(copies) > 2  # a distractor copies a variable (the chain itself has 2 copies)
    chain_first = [hops_back(t.splitlines()[0] + "\n>>> print(" + t[4] + ")") for t in texts]
    answers = [t.splitlines()[0][-1] == run_session(t) for t in texts]
    assert 0 < sum(answers) < len(texts) and chain_first.count(1) == len(texts)
    with pytest.raises(ValueError):
        program(rng, 0)


def test_corpus_never_holds_an_eval_item_and_mixes_in_order():
    held_out = {row["context"] for k in (1, 2, 3, 4) for row in hops_dataset(k)["test"]}
    docs = list(hops_documents(60))
    sessions = [s for _, text in docs for s in text.split("\n\n")]
    assert len(sessions) == 60 * 16
    hop_counts = set()
    for s in sessions:
        *program_lines, answer = s.strip("\n").splitlines()
        text = "\n".join(program_lines) + "\n"
        assert text not in held_out and run_session(text) == answer
        hop_counts.add(hops_back(text))
    assert hop_counts == {1, 2, 3, 4}
    mixed = load_splits("builtin:hops-30+python-stdlib", val_fraction=0.05, max_bytes=200_000)
    both = mixed.train + mixed.val
    sessions_only = re.compile(r"(>>> .*\n|\d\n|\n)+")
    assert sum(bool(sessions_only.fullmatch(t)) for t in both) == 30  # first, then the stdlib
    assert any("import" in t for t in both)
    assert open_corpus("builtin:hops-30").fingerprint()["hops_version"] >= 1


@pytest.mark.parametrize("spec", ["builtin:hops-0", "builtin:hop", "builtin:hops+hops"])
def test_bad_builtin_specs_fail_in_one_line(spec):
    with pytest.raises(KeelError, match="builtin"):
        open_corpus(spec)


def test_tasks_are_indexed_under_their_tag():
    from keelctl.eval.harness import resolve_tasks

    manager = resolve_tasks([HOPS_TAG])
    assert set(HOPS_TASKS) <= set(manager.all_tasks)
