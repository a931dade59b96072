"""Variable-tracking programs, generated and seeded: a task where depth should matter.

One program is a Python interpreter session (doctest style) that assigns single-letter
variables and prints one of them:

    >>> q = 7
    >>> x = 2
    >>> d = q
    >>> m = x
    >>> print(d)
    7

The printed variable's value passes through `hops` assignments: its chain starts with a literal
(q = 7) and each further hop copies the previous variable (d = q), so hops = 1 is a plain
look-up and hops = 4 needs four look-ups in a row. Distractor statements (other variables,
other digits, some copying each other) are interleaved at random; chains keep their order.
Every digit in one program is distinct, so the answer is one digit and names one chain.

The same generator makes the bundled lm-eval tasks keel_hops_k1..k4 (keelctl/eval/tasks/) and
the training corpus builtin:hops (keelctl/data/corpora.py), from different seeds; the corpus
leaves out any program that is also an eval item, so no eval item is trained on.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

HOPS = (1, 2, 3, 4)
DISTRACTORS = 4  # distractor statements per program
EVAL_SEED = 2601  # the bundled tasks' items
EVAL_ITEMS = 200  # per hop count
CORPUS_SEED = 19895  # builtin:hops (another stream of the same generator)
PROGRAMS_PER_DOCUMENT = 16
CORPUS_DOCUMENTS = 2000  # builtin:hops; builtin:hops-N gives N
VERSION = 1  # bump when the programs change: token stores built from the old ones go stale


def program(rng: random.Random, hops: int, distractors: int = DISTRACTORS) -> tuple[str, int]:
    """(session text up to and including the print line, the digit it prints)."""
    if hops < 1 or not 0 <= distractors <= 9 or hops + distractors > 26:
        raise ValueError(f"no program with {hops} hops and {distractors} distractors")
    names = rng.sample(string.ascii_lowercase, hops + distractors)
    chain, others = names[:hops], names[hops:]
    digits = rng.sample(range(10), 1 + distractors)
    answer, spare = digits[0], digits[1:]
    chain_lines = [f"{chain[0]} = {answer}"] + [
        f"{chain[i]} = {chain[i - 1]}" for i in range(1, hops)
    ]
    chain_slots = set(rng.sample(range(hops + distractors), hops))
    lines, assigned = [], []
    for slot in range(hops + distractors):
        if slot in chain_slots:
            lines.append(chain_lines.pop(0))
            continue
        name = others.pop()
        if assigned and rng.random() < 0.5:  # copy an earlier distractor: a chain of its own
            lines.append(f"{name} = {rng.choice(assigned)}")
        else:
            lines.append(f"{name} = {spare.pop()}")
        assigned.append(name)
    text = "".join(f">>> {line}\n" for line in lines) + f">>> print({chain[-1]})\n"
    return text, answer


def eval_items(hops: int, n: int = EVAL_ITEMS, seed: int = EVAL_SEED) -> list[dict]:
    """lm-eval rows: context (the session), choices (the ten digits), label (the answer)."""
    rng = random.Random(f"{seed}-{hops}")
    items = []
    for _ in range(n):
        text, answer = program(rng, hops)
        items.append({"context": text, "choices": [str(d) for d in range(10)], "label": answer})
    return items


def _eval_programs() -> frozenset[str]:
    return frozenset(item["context"] for hops in HOPS for item in eval_items(hops))


def hops_documents(n_documents: int = CORPUS_DOCUMENTS) -> Iterator[tuple[str, str]]:
    """(key, text) of the training corpus: PROGRAMS_PER_DOCUMENT sessions with their printed
    answers per document, hop counts 1..4 equally often, blank line between sessions."""
    held_out, rng = _eval_programs(), random.Random(CORPUS_SEED)
    for d in range(n_documents):
        sessions = []
        while len(sessions) < PROGRAMS_PER_DOCUMENT:
            text, answer = program(rng, HOPS[len(sessions) % len(HOPS)])
            if text not in held_out:
                sessions.append(f"{text}{answer}\n")
        yield f"hops/{d:06d}", "\n".join(sessions)
