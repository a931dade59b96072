"""Corpora: turn a corpus spec into a stream of (key, text) documents, and the split rule.

Specs (docs/data.md):
    builtin:python-stdlib   the running Python's standard-library *.py sources
    builtin:hops[-N]        N (default 2,000) documents of generated variable-tracking programs
                            (keelctl/data/hops.py); builtin:hops+python-stdlib mixes, in order
    PATH | DIR | GLOB       local text (jsonl: one document per line, parquet: one per row)
    hf:NAME[:CONFIG]        a Hugging Face dataset (hub name, local data dir, or save_to_disk dir)

The train/validation split is by document and deterministic: documents are ranked by a hash of
a stable key (relative path, path#line, row index) and the lowest-ranked val_fraction go to
validation. A corpus of one document is split inside it instead, at a line near its end.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from keelctl.errors import KeelError

BUILTINS = ("python-stdlib", "hops", "hops-N")
SPLITS = ("train", "val")

# Extensions picked up when walking a directory; an explicitly named file is read whatever it is.
TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .tex .py .pyi .c .h .cc .cpp .hpp .rs .go .java .js .ts .sh"
    " .html .css .xml .json .jsonl .yaml .yml .toml .ini .cfg .csv .tsv".split()
)
_SCHEME = re.compile(r"^[A-Za-z][\w.+-]+:")  # "hf:", "builtin:"; not a Windows drive "C:"
_GLOB_CHARS = frozenset("*?[")


@dataclass
class CorpusSplits:
    train: list[str]
    val: list[str]


@dataclass(frozen=True)
class Corpus:
    """A corpus spec, resolved: streams its documents and names itself cheaply.

    documents() yields (stable key, text) in a fixed order; validation_documents() yields the
    dataset's own validation split (hf: only) or None. Nothing is held in memory."""

    spec: str
    text_field: str = "text"
    hf_split: str = "train"

    def documents(self) -> Iterator[tuple[str, str]]:
        if self.spec.startswith("hf:"):
            from keelctl.data.hf_corpus import hf_documents

            return hf_documents(self.spec[3:], self.text_field, self.hf_split)
        return _keyed_documents(self.spec, self.text_field)

    def validation_documents(self) -> Iterator[tuple[str, str]] | None:
        if not self.spec.startswith("hf:"):
            return None
        from keelctl.data.hf_corpus import hf_validation_documents

        return hf_validation_documents(self.spec[3:], self.text_field, self.hf_split)

    def fingerprint(self) -> dict:
        """What identifies the corpus without reading it: file paths, sizes and mtimes, or an
        hf dataset's name, config and split (its files' stats when it is a local folder)."""
        if self.spec.startswith("hf:"):
            from keelctl.data.hf_corpus import hf_fingerprint

            return hf_fingerprint(self.spec[3:], self.hf_split)
        root, files = _source_files(self.spec)
        stats = []
        for path in files:
            st = path.stat()
            stats.append([path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        if any(n.startswith("hops") for n in _builtin_names(self.spec)):
            from keelctl.data.hops import VERSION

            return {"spec": self.spec, "files": stats, "hops_version": VERSION}
        return {"spec": self.spec, "files": stats}

    def size_hint(self) -> int | None:
        """Bytes of input to read (for progress), when cheap to know."""
        if self.spec.startswith("hf:"):
            from keelctl.data.hf_corpus import hf_size_hint

            return hf_size_hint(self.spec[3:], self.hf_split)
        return sum(path.stat().st_size for path in _source_files(self.spec)[1])


def open_corpus(spec: str, text_field: str = "text", hf_split: str = "train") -> Corpus:
    """Check a spec's form and that its files exist; reads no document."""
    if not isinstance(spec, str) or not spec.strip():
        raise KeelError("empty corpus spec; use builtin:python-stdlib, a path or glob, or hf:NAME")
    corpus = Corpus(spec.strip(), text_field, hf_split)
    if not corpus.spec.startswith("hf:"):
        _source_files(corpus.spec)  # raises for a missing path or an unknown scheme
    return corpus


def load_documents(
    spec: str,
    split: str,
    *,
    val_fraction: float = 0.01,
    text_field: str = "text",
    hf_split: str = "train",
    max_bytes: int | None = None,
) -> list[str]:
    """The documents of one split ("train" or "val") of the corpus `spec`."""
    if split not in SPLITS:
        raise KeelError(f"unknown split {split!r}; use 'train' or 'val'")
    splits = load_splits(
        spec,
        val_fraction=val_fraction,
        text_field=text_field,
        hf_split=hf_split,
        max_bytes=max_bytes,
    )
    return splits.train if split == "train" else splits.val


def check_split_args(val_fraction: float, max_bytes: int | None) -> None:
    if not 0 < val_fraction < 1:
        raise KeelError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if max_bytes is not None and max_bytes < 1:
        raise KeelError(f"max_bytes must be at least 1, got {max_bytes}")


def load_splits(
    spec: str,
    *,
    val_fraction: float = 0.01,
    text_field: str = "text",
    hf_split: str = "train",
    max_bytes: int | None = None,
) -> CorpusSplits:
    """Both splits in memory (one read of the corpus). The token store streams the same
    documents and applies the same rule without holding them (keelctl.data.prepare)."""
    check_split_args(val_fraction, max_bytes)
    corpus = open_corpus(spec, text_field, hf_split)
    train = _nonempty(capped_nonempty(corpus.documents(), max_bytes), corpus.spec)
    own_val = corpus.validation_documents()
    if own_val is None:
        splits = split_documents(train, val_fraction)
    else:  # the dataset's own validation split, capped to its share of max_bytes
        val = [t for _, t in capped_nonempty(own_val, val_cap(max_bytes, val_fraction))]
        splits = CorpusSplits(train=[t for _, t in train], val=val)
    if not any(t.strip() for t in splits.train) or not any(t.strip() for t in splits.val):
        raise KeelError(f"corpus {spec!r} gives an empty train or validation split; add text")
    return splits


def val_cap(max_bytes: int | None, val_fraction: float) -> int | None:
    return None if max_bytes is None else max(1, int(max_bytes * val_fraction))


def _keyed_documents(spec: str, text_field: str) -> Iterator[tuple[str, str]]:
    """(stable key, text) pairs for builtin and local specs, in sorted key order (a mix of
    builtins: each in the spec's order)."""
    if spec.startswith("builtin:"):
        for name in _builtin_names(spec):
            if name == "python-stdlib":
                yield from python_stdlib_documents()
            else:
                from keelctl.data.hops import hops_documents

                yield from hops_documents(_hops_count(name))
        return
    root, files = _source_files(spec)
    for path in files:
        key = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl_documents(path, key, text_field)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, key, text_field)
        else:
            yield key, read_text(path)


def _source_files(spec: str) -> tuple[Path, list[Path]]:
    if spec.startswith("builtin:"):
        if "python-stdlib" in _builtin_names(spec):
            return _stdlib_files()
        return Path("."), []  # generated: no files
    return _resolve_local(spec)


def _builtin_names(spec: str) -> list[str]:
    """The builtins a builtin:A+B spec mixes, checked; [] for any other spec."""
    if not spec.startswith("builtin:"):
        return []
    names = spec.removeprefix("builtin:").split("+")
    for name in names:
        if name != "python-stdlib" and _hops_count(name) is None:
            raise KeelError(
                f"unknown builtin corpus {name!r}; available: {', '.join(BUILTINS)} "
                "(mix them with +, e.g. builtin:hops+python-stdlib)"
            )
    if len(set(names)) < len(names):
        raise KeelError(f"corpus {spec!r} names a builtin twice; name each once")
    return names


def _hops_count(name: str) -> int | None:
    """Documents of builtin:hops or builtin:hops-N; None for another name."""
    from keelctl.data.hops import CORPUS_DOCUMENTS

    if name == "hops":
        return CORPUS_DOCUMENTS
    count = name.removeprefix("hops-")
    return int(count) if name.startswith("hops-") and count.isdigit() and int(count) > 0 else None


def _stdlib_files() -> tuple[Path, list[Path]]:
    """Every *.py under the interpreter's stdlib folder, tests included, packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "dist-packages")]
        files.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return root, sorted(files)


def python_stdlib_documents() -> Iterator[tuple[str, str]]:
    root, files = _stdlib_files()
    return ((p.relative_to(root).as_posix(), read_text(p)) for p in files)


def _resolve_local(spec: str) -> tuple[Path, list[Path]]:
    """(root the keys are relative to, sorted files) for a file, directory or glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, _walk_text_files(path)
    if _GLOB_CHARS & set(spec):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = sorted({f for m in matches for f in ([m] if m.is_file() else _walk_text_files(m))})
        if not files:
            raise KeelError(f"corpus glob {spec!r} matched no files; check the pattern")
        # Keys relative to the pattern's fixed prefix, so moving the corpus keeps the split.
        fixed = list(takewhile(lambda part: not _GLOB_CHARS & set(part), path.parts))
        return Path(*fixed), files
    if _SCHEME.match(spec):
        raise KeelError(
            f"unknown corpus spec {spec!r}; use builtin:python-stdlib, a path or glob, "
            "or hf:NAME[:CONFIG]"
        )
    raise KeelError(f"corpus path {spec!r} does not exist; check it (or use builtin:python-stdlib)")


def _walk_text_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def read_text(path: Path) -> str:
    # Undecodable bytes (a few stdlib tests are latin-1 on purpose) become U+FFFD, not an error.
    return path.read_bytes().decode("utf-8", errors="replace")


def _jsonl_documents(path: Path, key: str, text_field: str) -> Iterator[tuple[str, str]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise KeelError(
                    f"{path}:{lineno} is not valid JSON ({e.msg}); fix the line"
                ) from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise KeelError(
                    f"{path}:{lineno} has no text field {text_field!r}; set data.text_field "
                    "to the key that holds the text"
                )
            yield f"{key}#{lineno}", text


def _parquet_documents(path: Path, key: str, text_field: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for a bad file
        raise KeelError(f"{path} is not a readable parquet file ({e}); check the file") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise KeelError(
            f"{path} has no column {text_field!r}; columns: {', '.join(columns)} "
            "(set data.text_field)"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield f"{key}#{row}", text if isinstance(text, str) else ""
            row += 1


def _nonempty(docs: Iterable[tuple[str, str]], spec: str) -> list[tuple[str, str]]:
    kept = list(docs)
    if not kept:
        raise KeelError(f"corpus {spec!r} has no text (no documents, or all empty); check the spec")
    return kept


def capped_nonempty(
    docs: Iterable[tuple[str, str]], max_bytes: int | None
) -> Iterator[tuple[str, str]]:
    """The first documents holding at most max_bytes of UTF-8 (the last one cut to fit), then
    the empty and whitespace-only ones dropped. Streams: the order of both steps matters."""
    left = max_bytes
    for key, text in docs:
        if left is not None:
            data = text.encode("utf-8")
            if len(data) >= left:
                text = data[:left].decode("utf-8", errors="ignore")
                left = 0
            else:
                left -= len(data)
        if text.strip():
            yield key, text
        if left == 0:
            return


def split_documents(docs: list[tuple[str, str]], val_fraction: float) -> CorpusSplits:
    """Deterministic split by document: the round(n*val_fraction) lowest key hashes (at least
    one, never all) are validation. Order inside each split follows the input order."""
    if len(docs) == 1:
        return _split_inside(docs[0][1], val_fraction)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    ranked = sorted(range(len(docs)), key=lambda i: (_key_hash(docs[i][0]), i))
    val_ids = set(ranked[:n_val])
    return CorpusSplits(
        train=[t for i, (_, t) in enumerate(docs) if i not in val_ids],
        val=[t for i, (_, t) in enumerate(docs) if i in val_ids],
    )


def _key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _split_inside(text: str, val_fraction: float) -> CorpusSplits:
    """One document: its last val_fraction (cut at a line start when there is one) is val."""
    if len(text) < 2:
        raise KeelError("corpus is a single one-character document; add text")
    cut = max(1, min(len(text) - 1, round(len(text) * (1 - val_fraction))))
    line_start = text.rfind("\n", 0, cut) + 1
    if line_start > 0 and cut - line_start <= len(text) - cut:  # at most doubles val
        cut = line_start
    return CorpusSplits(train=[text[:cut]], val=[text[cut:]])
