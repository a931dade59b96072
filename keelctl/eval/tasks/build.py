"""Regenerate the bundled task data from held-out text, deterministically:

    python -m keelctl.eval.tasks.build            # rewrites keelctl/eval/tasks/data/*.jsonl

The source is the 9 files of builtin:python-stdlib with the lowest split hash (its validation
split at val_fraction 0.005). The split holds out the lowest-hash files, so every run on that
corpus with val_fraction x files >= 9 never trains on them: the shipped recipes (0.01 of 1,250
files under their 20 MB cap) included. The committed files come from CPython 3.11; another
stdlib gives other files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

SOURCE = "builtin:python-stdlib"
VAL_FRACTION = 0.005
SEED = 1337
NEAR = 12  # distractors come from the NEAR other lines closest in length
DATA_DIR = Path(__file__).parent / "data"


def _round_robin(groups: Sequence[Sequence], n: int) -> list:
    """Up to n items taking one from each group in turn (keeps every source represented)."""
    out, depth = [], 0
    while len(out) < n and any(depth < len(g) for g in groups):
        out += [g[depth] for g in groups if depth < len(g)][: n - len(out)]
        depth += 1
    return out


def _is_candidate(line: str) -> bool:
    """A line worth predicting that fits a 64-token context even byte-tokenised."""
    return len(line.strip()) >= 8 and len(line) <= 60


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def nextline_items(
    docs: Sequence[str],
    n: int,
    *,
    seed: int = SEED,
    n_choices: int = 3,
    context_lines: int = 8,
    max_context_chars: int = 400,
) -> list[dict]:
    """Multiple choice: the context is the lines before a line of one document; the choices
    are that line and n_choices - 1 lines from other documents (same indentation where
    possible, drawn from the NEAR closest in length, never the same text); label is the index
    of the true line."""
    rng = random.Random(seed)
    lines = [doc.splitlines() for doc in docs]
    pool = [(d, line) for d, ls in enumerate(lines) for line in ls if _is_candidate(line)]
    positions = []
    for d, ls in enumerate(lines):
        spots = [
            (d, i)
            for i in range(len(ls))
            if _is_candidate(ls[i])
            and sum(bool(x.strip()) for x in ls[max(0, i - context_lines) : i]) >= 3
        ]
        rng.shuffle(spots)
        positions.append(spots)
    items = []
    for d, i in _round_robin(positions, n):
        true = lines[d][i]
        others = [line for od, line in pool if od != d and line.strip() != true.strip()]
        same_indent = [line for line in others if _indent(line) == _indent(true)]
        source = same_indent if len(set(same_indent)) >= n_choices - 1 else others
        # Of similar length, so that summed log-likelihood gains nothing from length alone.
        near = sorted(set(source), key=lambda line: (abs(len(line) - len(true)), line))[:NEAR]
        distractors = rng.sample(near, n_choices - 1)
        choices = [true, *distractors]
        rng.shuffle(choices)
        context = lines[d][max(0, i - context_lines) : i]
        while len(context) > 1 and sum(len(x) + 1 for x in context) > max_context_chars:
            context = context[1:]
        items.append(
            {"context": "\n".join(context) + "\n", "choices": choices, "label": choices.index(true)}
        )
    return items


def rolling_items(docs: Sequence[str], n: int, *, max_chars: int = 1500) -> list[dict]:
    """Documents for loglikelihood_rolling: pieces of at most max_chars, cut at line ends."""
    pieces = []
    for doc in docs:
        chunks, current = [], ""
        for line in doc.splitlines(keepends=True):
            if current and len(current) + len(line) > max_chars:
                chunks.append(current)
                current = ""
            current += line[:max_chars]
        chunks += [current] if current.strip() else []
        pieces.append([c for c in chunks if c.strip()])
    return [{"text": text} for text in _round_robin(pieces, n)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def build(out_dir: Path = DATA_DIR) -> dict[str, int]:
    """Write the bundled data files; returns their sizes in bytes."""
    from keelctl.data import load_documents

    docs = load_documents(SOURCE, "val", val_fraction=VAL_FRACTION)
    files = {
        "keel_nextline.jsonl": nextline_items(docs, 200),
        "keel_stdlib_ppl.jsonl": rolling_items(docs, 40),
    }
    for name, rows in files.items():
        write_jsonl(out_dir / name, rows)
    return {name: (out_dir / name).stat().st_size for name in files}


if __name__ == "__main__":
    for name, size in build().items():
        print(f"wrote {DATA_DIR / name} ({size} bytes)")
