"""The token cache: a corpus tokenized once into flat memmaps, reused while nothing changed.

    CACHE/tokens/HASH/train.bin        token ids, documents each followed by the EOT id
    CACHE/tokens/HASH/val.bin          (uint16 when the vocabulary fits, else uint32)
    CACHE/tokens/HASH/tokenizer.json   the tokenizer that made them (a trained BPE lives here)
    CACHE/tokens/HASH/meta.json        counts (documents, UTF-8 bytes, tokens), dtype, hash

HASH covers the documents' text, the tokenizer identity and the split parameters, so a changed
corpus or tokenizer gets a new folder. A folder is built under a temporary name and renamed into
place in one step, so readers never see half a cache (and concurrent builders do not clash).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from keelctl.data.corpora import CorpusSplits, load_splits
from keelctl.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, tokenizer_from_dict
from keelctl.errors import KeelError

FORMAT = 1
CACHE_ENV = "KEELCTL_CACHE"
SPLITS = ("train", "val")
_CHUNK_CHARS = 1 << 24  # tokenize ~16M characters at a time to bound memory


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: np.ndarray  # 1-D read-only memmap of token ids
    val: np.ndarray
    meta: dict
    path: Path | None = None  # the cache folder holding the memmaps


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "keelctl")


def prepare_tokens(
    spec: str,
    tokenizer_kind: str = "byte",
    *,
    vocab_size: int | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    hf_split: str = "train",
    max_bytes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: Tokenizer | None = None,
) -> PreparedData:
    """Tokenized train/val memmaps for a corpus, from the cache when it is already there.

    tokenizer=None builds one from tokenizer_kind: "byte", or "bpe" trained on the train
    documents with vocab_size. A given tokenizer (e.g. a run's, for evaluation) is used as is."""
    if tokenizer is None:
        _check_tokenizer_args(tokenizer_kind, vocab_size)
    params = {
        "val_fraction": val_fraction,
        "text_field": text_field,
        "hf_split": hf_split,
        "max_bytes": max_bytes,
    }
    splits = load_splits(spec, **params)
    if tokenizer is not None:
        identity = tokenizer.to_dict()
    else:
        identity = _planned_identity(tokenizer_kind, vocab_size)
    key = _content_hash(splits, identity, params)
    folder = _writable(Path(cache_dir) if cache_dir else default_cache_dir()) / "tokens" / key[:24]

    cached = _open(folder, key, tokenizer)
    if cached is not None:
        return cached
    if tokenizer is None:
        tokenizer = _build_tokenizer(tokenizer_kind, vocab_size, splits.train)
    meta = {"format": FORMAT, "hash": key, **params}
    _build(folder, splits, tokenizer, meta)
    prepared = _open(folder, key, tokenizer)
    if prepared is None:  # only if something outside deletes the folder while we run
        raise KeelError(f"token cache {folder} vanished while being written; run again")
    return prepared


def _check_tokenizer_args(kind: str, vocab_size: int | None) -> None:
    if kind not in ("byte", "bpe"):
        raise KeelError(f"unknown tokenizer {kind!r}; use 'byte' or 'bpe'")
    if kind == "bpe" and (vocab_size is None or vocab_size < 257):
        raise KeelError(
            f"tokenizer bpe needs vocab_size >= 257 (256 bytes + end-of-text), got {vocab_size}"
        )


def _planned_identity(kind: str, vocab_size: int | None) -> dict:
    """What names a tokenizer before it exists (a BPE is trained only on a cache miss)."""
    if kind == "byte":
        return ByteTokenizer().to_dict()
    import tokenizers

    return {"kind": "bpe-trained", "vocab_size": vocab_size, "tokenizers": tokenizers.__version__}


def _content_hash(splits: CorpusSplits, identity: dict, params: dict) -> str:
    h = hashlib.sha256(json.dumps([FORMAT, identity, params], sort_keys=True).encode())
    for name in SPLITS:
        docs = getattr(splits, name)
        h.update(f"\0{name}:{len(docs)}\0".encode())
        for text in docs:
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def _writable(cache_dir: Path) -> Path:
    try:
        (cache_dir / "tokens").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KeelError(
            f"cannot create the token cache at {cache_dir} ({e.strerror}); set data.cache_dir "
            f"or ${CACHE_ENV} to a writable folder"
        ) from None
    return cache_dir


def _build_tokenizer(kind: str, vocab_size: int | None, train_docs: list[str]) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(train_docs, vocab_size)


def _build(folder: Path, splits: CorpusSplits, tokenizer: Tokenizer, meta: dict) -> None:
    """Write the cache folder under a temporary name, then rename it into place."""
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    meta.update(
        tokenizer=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        dtype=dtype.name,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in SPLITS:
            docs = getattr(splits, name)
            with open(tmp / f"{name}.bin", "wb") as f:
                n_tokens = _write_tokens(f, docs, tokenizer, dtype)
            meta[f"n_docs_{name}"] = len(docs)
            meta[f"n_bytes_{name}"] = sum(len(t.encode("utf-8")) for t in docs)
            meta[f"n_tokens_{name}"] = n_tokens
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_dict()))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if folder.exists():  # stale or broken (a valid one was returned before building)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tokens(f, docs: list[str], tokenizer: Tokenizer, dtype: np.dtype) -> int:
    """Append each document's ids and the EOT id to f, a chunk of documents at a time."""
    n_tokens, chunk, chunk_chars = 0, [], 0
    for text in chain(docs, [None]):
        if text is not None:
            chunk.append(text)
            chunk_chars += len(text)
        if chunk and (text is None or chunk_chars >= _CHUNK_CHARS):
            ids = _encode_chunk(chunk, tokenizer, dtype)
            ids.tofile(f)
            n_tokens += len(ids)
            chunk, chunk_chars = [], 0
    return n_tokens


def _encode_chunk(docs: list[str], tokenizer: Tokenizer, dtype: np.dtype) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):
        return byte_tokens(docs, tokenizer.eot_id, dtype)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    id_lists = encode_batch(docs) if encode_batch else [tokenizer.encode(t) for t in docs]
    eot = [tokenizer.eot_id]
    return np.fromiter(chain.from_iterable(chain(ids, eot) for ids in id_lists), dtype=dtype)


def byte_tokens(docs: list[str], eot_id: int, dtype: np.dtype = np.dtype(np.uint16)) -> np.ndarray:
    """Byte-level ids of docs with eot_id after each, vectorised: bytes are their own ids."""
    encoded = [t.encode("utf-8") for t in docs]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()) + len(encoded), dtype=dtype)
    eot_at = np.cumsum(lengths + 1) - 1
    is_text = np.ones(len(out), dtype=bool)
    is_text[eot_at] = False
    out[is_text] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    out[eot_at] = eot_id
    return out


def _open(folder: Path, key: str, tokenizer: Tokenizer | None) -> PreparedData | None:
    """The cached data in folder, or None when it is missing, stale or incomplete."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("hash") != key:
            return None
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for name in SPLITS:
            path, n = folder / f"{name}.bin", meta[f"n_tokens_{name}"]
            if path.stat().st_size != n * dtype.itemsize:
                return None
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
        if tokenizer is None:
            tokenizer = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return PreparedData(
        tokenizer=tokenizer, train=arrays["train"], val=arrays["val"], meta=meta, path=folder
    )


def prepare_data_section(d, tokenizer: Tokenizer | None = None) -> PreparedData:
    """prepare_tokens for a recipe's `data` section (any object with DataConfig's fields;
    data/ does not import the config schema)."""
    return prepare_tokens(
        d.corpus,
        d.tokenizer,
        vocab_size=d.vocab_size,
        val_fraction=d.val_fraction,
        text_field=d.text_field,
        hf_split=d.split,
        max_bytes=d.max_bytes,
        cache_dir=d.cache_dir,
        tokenizer=tokenizer,
    )
