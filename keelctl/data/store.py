"""The token store: a corpus tokenized once into fixed-size shards plus a manifest.

    STORE/manifest.json          format, source fingerprint, split parameters, tokenizer
                                 identity, dtype, shard size, and tokens/bytes/documents per
                                 split and per shard (written last: a store without it is
                                 unfinished)
    STORE/tokenizer.json         the tokenizer that made the shards (tokenizer_from_dict)
    STORE/train-000000.bin ...   raw uint16 ids (uint32 when the vocabulary needs it), every
    STORE/val-000000.bin ...     document followed by the end-of-text id; read as memmaps

A split's shards concatenated are its token stream; readers see one array (ShardedTokens), so
training windows do not depend on the shard size. docs/data.md says why raw .bin + memmap.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keelctl.atomic import atomic_path
from keelctl.data.tokenizers import Tokenizer, tokenizer_from_dict
from keelctl.errors import KeelError

FORMAT = 2
MANIFEST = "manifest.json"
TOKENIZER_JSON = "tokenizer.json"
SPLITS = ("train", "val")


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: np.ndarray | ShardedTokens  # 1-D, read-only; sliced like an array
    val: np.ndarray | ShardedTokens
    meta: dict  # the manifest
    path: Path | None = None  # the store folder


def store_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.bin"


class ShardedTokens:
    """Several shard memmaps read as one 1-D array: len() and slicing, across shard edges.

    Pickles as file names, so DataLoader workers reopen the memmaps instead of copying them."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype):
        self.paths, self.counts, self.dtype = [str(p) for p in paths], list(counts), dtype
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        self._open()

    def _open(self) -> None:
        self.shards = [
            np.memmap(p, dtype=self.dtype, mode="r", shape=(n,)) if n else np.empty(0, self.dtype)
            for p, n in zip(self.paths, self.counts, strict=True)
        ]

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def ndim(self) -> int:
        return 1

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            i = int(index) + len(self) if index < 0 else int(index)
            if not 0 <= i < len(self):
                raise IndexError(f"token {index} out of range for {len(self)} tokens")
            shard = bisect_right(self.starts, i) - 1
            return self.shards[shard][i - self.starts[shard]]
        if not isinstance(index, slice):
            raise TypeError("ShardedTokens takes an int or a slice")
        start, stop, step = index.indices(len(self))
        if step != 1:
            return self[start:stop][::step]
        pieces, first = [], bisect_right(self.starts, start) - 1
        for shard in range(max(first, 0), len(self.shards)):
            lo, hi = self.starts[shard], self.starts[shard + 1]
            if lo >= stop:
                break
            pieces.append(self.shards[shard][max(start, lo) - lo : min(stop, hi) - lo])
        return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "shards"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a finished store, None when there is none; a KeelError when it is
    unreadable or of another format version."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise KeelError(
            f"token store {folder} has an unreadable {MANIFEST}; delete {folder} and run "
            "keelctl prepare again"
        ) from None
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version != FORMAT:
        raise KeelError(
            f"token store {folder} has format version {version}, this keelctl reads {FORMAT}; "
            f"delete {folder} and run keelctl prepare again"
        )
    return manifest


def open_store(folder: Path, manifest: dict, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Memmaps of a finished store, each shard checked against the manifest's token count."""
    dtype = np.dtype(manifest["dtype"])
    arrays = {}
    for split in SPLITS:
        shards = manifest["splits"][split]["shards"]
        paths = [folder / s["file"] for s in shards]
        counts = [s["tokens"] for s in shards]
        for path, n in zip(paths, counts, strict=True):
            size = path.stat().st_size if path.is_file() else None
            if size != n * dtype.itemsize:
                found = "missing" if size is None else f"{size} bytes"
                raise KeelError(
                    f"token store shard {path} is {found}, the manifest says "
                    f"{n * dtype.itemsize} bytes (truncated or damaged); delete {folder} and "
                    "run keelctl prepare again"
                )
        if len(paths) == 1:
            arrays[split] = np.memmap(paths[0], dtype=dtype, mode="r", shape=(counts[0],))
        else:
            arrays[split] = ShardedTokens(paths, counts, dtype)
    if tokenizer is None:
        tokenizer = tokenizer_from_dict(json.loads((folder / TOKENIZER_JSON).read_text()))
    return PreparedData(tokenizer, arrays["train"], arrays["val"], manifest, folder)


class ShardWriter:
    """Appends one split's tokens into fixed-size shards; a shard appears under its name only
    when it is complete (written as a temporary file, then renamed)."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = self._shard = None  # the open shard's file; its writes (file, atomic_path)
        self._tokens = self._bytes = self._docs = 0

    def write(self, tokens: np.ndarray, index: np.ndarray) -> None:
        """tokens: whole documents; index: their DOC_INDEX rows. A document counts (docs,
        bytes) in the shard holding its end-of-text token."""
        doc_ends = np.cumsum(index["tokens"])
        done = 0
        while done < len(tokens):
            if self._file is None:
                self._shard = ExitStack()
                path = self.folder / shard_name(self.split, len(self.shards))
                tmp = self._shard.enter_context(atomic_path(path))
                self._file = self._shard.enter_context(open(tmp, "wb"))
            take = min(len(tokens) - done, self.shard_tokens - self._tokens)
            tokens[done : done + take].astype(self.dtype, copy=False).tofile(self._file)
            ended = (doc_ends > done) & (doc_ends <= done + take)
            self._docs += int(ended.sum())
            self._bytes += int(index["bytes"][ended].sum())
            self._tokens += take
            done += take
            if self._tokens == self.shard_tokens:
                self._finish_shard()

    def close(self) -> dict:
        if self._file is not None:
            self._finish_shard()
        total = {k: sum(s[k] for s in self.shards) for k in ("tokens", "bytes", "docs")}
        return {**total, "shards": self.shards}

    def _finish_shard(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._shard.close()  # closes the file, then renames it into place
        self.shards.append(
            {"file": name, "tokens": self._tokens, "bytes": self._bytes, "docs": self._docs}
        )
        self._file, self._shard, self._tokens, self._bytes, self._docs = None, None, 0, 0, 0
