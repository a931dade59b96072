"""`keelctl prepare`: a corpus streamed through N worker processes into a token store.

1. tokenizer: byte, a pretrained one, or a BPE trained on a bounded sample of the corpus;
2. staging: documents are read in order, cut into batches of ~BATCH_CHARS of text, tokenized
   by the workers and written as numbered chunks (tokens + one index row per document: key
   hash, tokens, bytes). A chunk appears complete or not at all, so a killed prepare resumes
   at the first missing chunk;
3. finishing: the split (today's rule: the round(n * val_fraction) lowest key hashes are
   validation) is decided from the chunk indexes alone, the tokens are copied into fixed-size
   train/val shards, the manifest is written, and the folder is renamed into place.
Memory is bounded by the batches in flight, never by the corpus. docs/data.md has the details.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from keelctl.atomic import atomic_write_bytes, remove_partial_writes
from keelctl.data.corpora import Corpus, capped_nonempty, split_documents, val_cap
from keelctl.data.encode import encode_documents, encode_in_worker, init_worker, key_hash64
from keelctl.data.store import (
    FORMAT,
    MANIFEST,
    TOKENIZER_JSON,
    ShardWriter,
    read_manifest,
    store_dtype,
)
from keelctl.data.tokenizers import BPETokenizer, Tokenizer, tokenizer_digest, tokenizer_from_dict
from keelctl.errors import KeelError

CACHE_ENV = "KEELCTL_CACHE"
BATCH_CHARS = 4 << 20  # text per worker task; fixed, so chunks are the same on a rerun
STAGING = "staging"
REQUEST_JSON = "request.json"  # in KEY.partial/: the source and tokenizer being built
MAIN, OWN_VAL = "doc", "val"  # staged streams: the corpus, and an hf dataset's own validation

# progress(phase, bytes done, bytes expected or None, tokens done)
Progress = Callable[[str, int, int | None, int], None]


class StoreBuild:
    """One store build: folder.partial/ filled, finished, renamed to folder, under a lock."""

    def __init__(self, folder, corpus: Corpus, source, identity, tokenizer, train_bytes, progress):
        self.folder, self.corpus, self.source, self.identity = folder, corpus, source, identity
        self.params = source["params"]
        self.tokenizer, self.train_bytes = tokenizer, train_bytes
        self.progress = progress or (lambda *args: None)
        self.partial = folder.with_name(folder.name + ".partial")

    def run(self, workers: int, shard_tokens: int) -> None:
        from filelock import FileLock

        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.folder.with_name(self.folder.name + ".lock"))
            lock.acquire()
        except OSError as e:
            raise _unwritable(self.folder, e) from None
        try:  # the other processes of a node wait here, then find the store finished
            if read_manifest(self.folder) is None:
                self._build(workers, shard_tokens)
        finally:
            lock.release()

    def _build(self, workers: int, shard_tokens: int) -> None:
        if self.folder.exists() and any(self.folder.iterdir()):
            raise KeelError(
                f"token store folder {self.folder} exists but holds no {MANIFEST}; choose an "
                "empty or new folder for data.store"
            )
        # What this build makes; a partial build of another request (data.store reused with
        # another tokenizer or corpus) is discarded, never resumed.
        request = json.dumps({"source": self.source, "identity": self.identity}, sort_keys=True)
        marker = self.partial / REQUEST_JSON
        if self.partial.exists() and not (marker.is_file() and marker.read_text() == request):
            shutil.rmtree(self.partial)
        try:
            (self.partial / STAGING).mkdir(parents=True, exist_ok=True)
            if not marker.is_file():
                atomic_write_bytes(marker, request.encode())
        except OSError as e:
            raise _unwritable(self.folder, e) from None
        if not (self.partial / MANIFEST).is_file():
            tokenizer = self._tokenizer()
            dtype = store_dtype(tokenizer.vocab_size)
            capped = capped_nonempty(self.corpus.documents(), self.params["max_bytes"])
            self._stage(MAIN, capped, tokenizer, dtype, workers)
            own_val = self.corpus.validation_documents()
            if own_val is not None:
                cap = val_cap(self.params["max_bytes"], self.params["val_fraction"])
                self._stage(OWN_VAL, capped_nonempty(own_val, cap), tokenizer, dtype, workers)
            self._finish(tokenizer, dtype, shard_tokens, has_own_val=own_val is not None)
        shutil.rmtree(self.partial / STAGING, ignore_errors=True)
        remove_partial_writes(self.partial)  # what the writes of a killed build left
        (self.partial / REQUEST_JSON).unlink(missing_ok=True)
        if self.folder.exists():
            self.folder.rmdir()  # an empty folder named by data.store
        os.replace(self.partial, self.folder)

    def _tokenizer(self) -> Tokenizer:
        """The tokenizer, saved in the partial store first so a resumed build reuses it."""
        path = self.partial / TOKENIZER_JSON
        if path.is_file():
            return tokenizer_from_dict(json.loads(path.read_text()))
        tokenizer = self.tokenizer
        if tokenizer is None:  # bpe
            self.progress("training bpe", 0, None, 0)
            sample = bpe_sample(self.corpus, self.params, self.train_bytes)
            tokenizer = BPETokenizer.train(sample, self.identity["vocab_size"])
        atomic_write_bytes(path, json.dumps(tokenizer.to_dict()).encode())
        return tokenizer

    def _stage(self, stream: str, docs, tokenizer, dtype, workers: int) -> None:
        staging = self.partial / STAGING
        expected = self.corpus.size_hint()
        if expected is not None and self.params["max_bytes"] is not None:
            expected = min(expected, self.params["max_bytes"])
        done_bytes = done_tokens = 0

        def record(index: np.ndarray) -> None:
            nonlocal done_bytes, done_tokens
            done_bytes += int(index["bytes"].sum())
            done_tokens += int(index["tokens"].sum())
            self.progress("tokenizing", done_bytes, expected, done_tokens)

        def write(name: str, tokens: np.ndarray, index: np.ndarray) -> None:
            atomic_write_bytes(staging / f"{name}.bin", tokens.tobytes())
            buffer = io.BytesIO()
            np.save(buffer, index)
            # the index last: it marks the staged part complete
            atomic_write_bytes(staging / f"{name}.idx", buffer.getvalue())
            record(index)

        if expected is not None and expected < 2 * BATCH_CHARS:
            workers = 1  # a small corpus: starting processes would cost more than it saves
        with _Encoder(tokenizer, dtype, workers) as encoder:
            for i, batch in enumerate(_batches(docs)):
                name = f"{stream}-{i:08d}"
                if (staging / f"{name}.idx").is_file():  # done before a kill
                    record(np.load(staging / f"{name}.idx"))
                    continue
                for done in encoder.submit(name, batch):
                    write(*done)
            for done in encoder.drain():
                write(*done)

    def _finish(self, tokenizer, dtype, shard_tokens: int, has_own_val: bool) -> None:
        """Split the staged documents and write the shards, then the manifest."""
        staging = self.partial / STAGING
        for stale in self.partial.glob("*.bin"):  # shards of a finish that was killed
            stale.unlink()
        main = sorted(p.stem for p in staging.glob(f"{MAIN}-*.idx"))
        counts, total_bytes = [], 0
        for name in main:  # one small index at a time: a big corpus has thousands of chunks
            index = np.load(staging / f"{name}.idx")
            counts.append(len(index))
            total_bytes += int(index["bytes"].sum())
        n = sum(counts)
        if n == 0:
            shutil.rmtree(self.partial, ignore_errors=True)  # nothing worth resuming
            raise KeelError(
                f"corpus {self.corpus.spec!r} has no text (no documents, or all empty); check "
                "the spec and data.text_field"
            )
        writers = {s: ShardWriter(self.partial, s, dtype, shard_tokens) for s in ("train", "val")}
        if n == 1 and not has_own_val:
            self._split_single_document(tokenizer, dtype, writers)
        else:
            val_ids = None if has_own_val else _validation_ids(staging, main, n, self.params)
            first = done_bytes = done_tokens = 0
            for name, count in zip(main, counts, strict=True):
                tokens, index = _load_chunk(staging, name, dtype)
                is_val = np.zeros(count, bool)
                if val_ids is not None:
                    is_val = np.isin(np.arange(first, first + count), val_ids)
                _route(tokens, index, is_val, writers)
                first, done_bytes = first + count, done_bytes + int(index["bytes"].sum())
                done_tokens += len(tokens)
                self.progress("writing shards", done_bytes, total_bytes, done_tokens)
            for name in sorted(p.stem for p in staging.glob(f"{OWN_VAL}-*.idx")):
                tokens, index = _load_chunk(staging, name, dtype)
                writers["val"].write(tokens, index)
        splits = {s: w.close() for s, w in writers.items()}
        if splits["val"]["docs"] == 0 or splits["train"]["docs"] == 0:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise KeelError(
                f"corpus {self.corpus.spec!r} gives an empty train or validation split; add text"
            )
        manifest = {
            "format": FORMAT,
            "source": self.source,
            "tokenizer": {
                "identity": self.identity,
                "kind": tokenizer.kind,
                "source": getattr(tokenizer, "source", None),
                "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id,
                "digest": tokenizer_digest(tokenizer),
            },
            "dtype": dtype.name,
            "shard_tokens": shard_tokens,
            "splits": splits,
        }
        atomic_write_bytes(
            self.partial / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode()
        )

    def _split_single_document(self, tokenizer, dtype, writers) -> None:
        """One document: split inside it at a line near its end (the in-memory rule)."""
        docs = capped_nonempty(self.corpus.documents(), self.params["max_bytes"])
        only = next(iter(docs))
        parts = split_documents([only], self.params["val_fraction"])
        for split in ("train", "val"):
            batch = [(only[0], text) for text in getattr(parts, split)]
            writers[split].write(*encode_documents(batch, tokenizer, dtype))


def bpe_sample(corpus: Corpus, params: dict, train_bytes: int) -> list[str]:
    """Training documents for the BPE: the first train_bytes of the corpus. When the whole
    corpus fits, exactly its training split; otherwise documents whose key hash is in the
    lowest 2 x val_fraction of the hash range are left out, a superset of the validation ones
    (they are the lowest val_fraction) for any corpus of more than a few hundred documents."""
    collected, total = [], 0
    for key, text in capped_nonempty(corpus.documents(), params["max_bytes"]):
        collected.append((key, text))
        total += len(text.encode("utf-8"))
        if total >= train_bytes:
            break
    else:
        if not collected:
            raise KeelError(f"corpus {corpus.spec!r} has no text (no documents, or all empty)")
        if corpus.validation_documents() is not None:
            return [text for _, text in collected]
        return split_documents(collected, params["val_fraction"]).train
    if corpus.validation_documents() is not None:
        return [text for _, text in collected]
    threshold = int(2 * params["val_fraction"] * 2**64)
    return [text for key, text in collected if key_hash64(key) >= threshold]


def _batches(docs: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, size = [], 0
    for key, text in docs:
        batch.append((key, text))
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _validation_ids(staging: Path, names: list[str], n: int, params: dict) -> np.ndarray:
    """Indices of the round(n * val_fraction) documents (at least one, never all) with the
    lowest (key hash, index): only that many candidates are held at any time."""
    n_val = min(n - 1, max(1, round(n * params["val_fraction"])))
    best_hash, best_id = np.empty(0, np.uint64), np.empty(0, np.int64)
    first = 0
    for name in names:
        hashes = np.load(staging / f"{name}.idx")["hash"].astype(np.uint64)
        ids = np.arange(first, first + len(hashes), dtype=np.int64)
        first += len(hashes)
        all_hash, all_id = np.concatenate([best_hash, hashes]), np.concatenate([best_id, ids])
        keep = np.lexsort((all_id, all_hash))[:n_val]
        best_hash, best_id = all_hash[keep], all_id[keep]
    return np.sort(best_id)


def _load_chunk(staging: Path, name: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    index = np.load(staging / f"{name}.idx")
    return np.fromfile(staging / f"{name}.bin", dtype=dtype), index


def _route(tokens: np.ndarray, index: np.ndarray, is_val: np.ndarray, writers: dict) -> None:
    if not is_val.any():  # most chunks: no copy
        writers["train"].write(tokens, index)
        return
    token_is_val = np.repeat(is_val, index["tokens"])
    writers["train"].write(tokens[~token_is_val], index[~is_val])
    writers["val"].write(tokens[token_is_val], index[is_val])


class _Encoder:
    """Batches -> (name, tokens, index) in submission order: in this process (one worker), or
    in a pool of spawned processes with at most two batches per worker in flight."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, workers: int):
        self.tokenizer, self.dtype, self.workers = tokenizer, dtype, workers
        self.pool, self.pending = None, deque()

    def __enter__(self) -> _Encoder:
        if self.workers > 1:
            # The platform's default start method (fork on Linux: no re-import of __main__).
            # Set here, the variable reaches the workers before `tokenizers` checks it at fork.
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = multiprocessing.Pool(
                    self.workers, initializer=init_worker, initargs=(self.tokenizer.to_dict(),)
                )
            finally:
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def submit(self, name: str, batch: list) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        if self.pool is None:
            yield name, *encode_documents(batch, self.tokenizer, self.dtype)
            return
        task = self.pool.apply_async(encode_in_worker, (batch, self.dtype.str))
        self.pending.append((name, task))
        while len(self.pending) >= 2 * self.workers:
            name, result = self.pending.popleft()
            yield name, *result.get()

    def drain(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        while self.pending:
            name, result = self.pending.popleft()
            yield name, *result.get()


def _unwritable(folder: Path, e: OSError) -> KeelError:
    return KeelError(
        f"cannot write the token store at {folder} ({e.strerror or e}); set data.store, "
        f"data.cache_dir or ${CACHE_ENV} to a writable folder"
    )
