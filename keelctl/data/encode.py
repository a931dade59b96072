"""Tokenizing a batch of documents: what each `keelctl prepare` worker process runs.

Kept free of torch and of the rest of keelctl.data so that spawned workers start fast.
"""

from __future__ import annotations

import hashlib
import os
from itertools import chain

import numpy as np

from keelctl.data.tokenizers import ByteTokenizer, Tokenizer, tokenizer_from_dict

# One row per document of a batch: its key hash (first 8 bytes of SHA-256, the split's rank),
# its tokens (EOT included) and its UTF-8 bytes.
DOC_INDEX = np.dtype([("hash", ">u8"), ("tokens", "<i8"), ("bytes", "<i8")])

_worker_tokenizer: Tokenizer | None = None


def key_hash64(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def init_worker(tokenizer_dict: dict) -> None:
    """Pool initializer: one tokenizer per process; its Rust thread pool stays at one thread
    because the processes already use every core."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def encode_in_worker(batch: list[tuple[str, str]], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(batch, _worker_tokenizer, np.dtype(dtype))


def encode_documents(
    batch: list[tuple[str, str]], tokenizer: Tokenizer, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """(token ids of every document each followed by EOT, one DOC_INDEX row per document)."""
    texts = [text for _, text in batch]
    index = np.empty(len(batch), dtype=DOC_INDEX)
    index["hash"] = [key_hash64(key) for key, _ in batch]
    index["bytes"] = [len(t.encode("utf-8")) for t in texts]
    if isinstance(tokenizer, ByteTokenizer):
        index["tokens"] = index["bytes"] + 1
        return byte_tokens(texts, tokenizer.eot_id, dtype), index
    encode_batch = getattr(tokenizer, "encode_batch", None)
    id_lists = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
    index["tokens"] = [len(ids) + 1 for ids in id_lists]
    eot = [tokenizer.eot_id]
    ids = np.fromiter(
        chain.from_iterable(chain(ids, eot) for ids in id_lists),
        dtype=dtype,
        count=int(index["tokens"].sum()),
    )
    return ids, index


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
