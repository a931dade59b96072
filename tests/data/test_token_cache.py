"""prepare_tokens: byte and BPE tokenization into cached memmaps, reuse and invalidation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import keelctl.data.token_cache as token_cache
from keelctl.data import ByteTokenizer, prepare_tokens
from keelctl.data.corpora import load_splits
from keelctl.data.tokenizers import BPETokenizer
from keelctl.errors import KeelError


def _documents_from_tokens(tokens: np.ndarray, tok) -> list[str]:
    """Cut a token stream at EOT ids and decode each document."""
    cuts = np.flatnonzero(np.asarray(tokens) == tok.eot_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(tokens[a:b].tolist()) for a, b in zip(starts, cuts, strict=True)]


def test_byte_tokens_round_trip_documents(tiny_corpus, tmp_path):
    p = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    splits = load_splits(str(tiny_corpus), val_fraction=0.1)
    assert isinstance(p.tokenizer, ByteTokenizer)
    assert isinstance(p.train, np.memmap) and p.train.dtype == np.uint16 and p.train.ndim == 1
    assert _documents_from_tokens(p.train, p.tokenizer) == splits.train
    assert _documents_from_tokens(p.val, p.tokenizer) == splits.val
    assert p.train[-1] == p.val[-1] == 256
    m = p.meta
    assert m["n_bytes_train"] == sum(len(t.encode()) for t in splits.train)
    assert m["n_tokens_train"] == m["n_bytes_train"] + m["n_docs_train"] == len(p.train)
    assert m["tokenizer"] == "byte" and m["dtype"] == "uint16" and len(m["hash"]) == 64


def test_byte_tokens_handle_multibyte_text():
    docs = ["héllo ✓", "", "日本"]
    ids = token_cache.byte_tokens(docs, 256)
    assert ids.tolist() == [*"héllo ✓".encode(), 256, 256, *"日本".encode(), 256]
    assert ByteTokenizer().decode(ids.tolist()) == "héllo ✓日本"


def test_cache_is_reused(tiny_corpus, tmp_path, monkeypatch):
    first = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    mtime = (first.path / "train.bin").stat().st_mtime_ns

    def no_tokenizing(*args):
        raise AssertionError("tokenized again although the cache was valid")

    monkeypatch.setattr(token_cache, "_write_tokens", no_tokenizing)
    again = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    assert again.path == first.path and again.meta == first.meta
    assert (again.path / "train.bin").stat().st_mtime_ns == mtime
    # Only the finished folder is left behind, no temporaries.
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [first.path.name]


def test_cache_is_invalidated_by_corpus_tokenizer_and_split(tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    cache = tmp_path / "cache"
    base = prepare_tokens(str(corpus), val_fraction=0.1, cache_dir=cache)
    (corpus / "doc_07.py").write_text("changed = True\n")
    changed = prepare_tokens(str(corpus), val_fraction=0.1, cache_dir=cache)
    assert changed.meta["hash"] != base.meta["hash"]
    assert changed.meta["n_bytes_train"] + changed.meta["n_bytes_val"] < (
        base.meta["n_bytes_train"] + base.meta["n_bytes_val"]
    )
    other_split = prepare_tokens(str(corpus), val_fraction=0.2, cache_dir=cache)
    assert other_split.meta["hash"] != changed.meta["hash"]
    assert len(list((cache / "tokens").iterdir())) == 3


def test_damaged_cache_is_rebuilt(tiny_corpus, tmp_path):
    p = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    expected = np.array(p.train)
    with open(p.path / "train.bin", "r+b") as f:
        f.truncate(10)
    rebuilt = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.train, expected)


def test_default_cache_dir_from_env(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KEELCTL_CACHE", str(tmp_path / "envcache"))
    p = prepare_tokens(str(tiny_corpus), val_fraction=0.1)
    assert p.path.parent == tmp_path / "envcache" / "tokens"


def test_bpe_trains_round_trips_and_is_cached(tiny_corpus, tmp_path, monkeypatch):
    p = prepare_tokens(
        str(tiny_corpus), "bpe", vocab_size=400, val_fraction=0.1, cache_dir=tmp_path
    )
    # At most vocab_size: training stops early when the corpus has no more pairs to merge.
    assert isinstance(p.tokenizer, BPETokenizer) and 300 < p.tokenizer.vocab_size <= 400
    assert p.meta["vocab_size"] == p.tokenizer.vocab_size
    assert p.meta["tokenizer"] == "bpe" and p.train.dtype == np.uint16
    splits = load_splits(str(tiny_corpus), val_fraction=0.1)
    assert _documents_from_tokens(p.val, p.tokenizer) == splits.val
    assert p.meta["n_tokens_train"] < p.meta["n_bytes_train"] / 2  # merges compress the text
    text = "def function_3_4(x):\n    return x * 4 + 3  # é\n"
    assert p.tokenizer.decode(p.tokenizer.encode(text)) == text

    def no_training(*args):
        raise AssertionError("BPE retrained although it was cached")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    again = prepare_tokens(
        str(tiny_corpus), "bpe", vocab_size=400, val_fraction=0.1, cache_dir=tmp_path
    )
    assert again.path == p.path and again.tokenizer.to_dict() == p.tokenizer.to_dict()
    np.testing.assert_array_equal(again.val, p.val)


def test_given_tokenizer_is_used_as_is(tiny_corpus, tmp_path):
    trained = prepare_tokens(
        str(tiny_corpus), "bpe", vocab_size=300, val_fraction=0.1, cache_dir=tmp_path
    )
    tok = BPETokenizer.train(["completely different text " * 50], 280)
    p = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path, tokenizer=tok)
    assert p.tokenizer is tok and p.meta["vocab_size"] == tok.vocab_size
    assert p.meta["hash"] != trained.meta["hash"]
    assert p.val.tolist() == sum(
        (tok.encode(t) + [tok.eot_id] for t in load_splits(str(tiny_corpus), val_fraction=0.1).val),
        [],
    )
    # A byte tokenizer given explicitly shares the cache of tokenizer_kind "byte".
    by_kind = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    given = prepare_tokens(
        str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path, tokenizer=ByteTokenizer()
    )
    assert given.path == by_kind.path


def test_large_vocabulary_uses_uint32(tiny_corpus, tmp_path):
    class WideBytes(ByteTokenizer):
        vocab_size, eot_id = 70_000, 69_999

        def to_dict(self):
            return {"kind": "wide-test"}

    p = prepare_tokens(
        str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path, tokenizer=WideBytes()
    )
    assert p.train.dtype == np.uint32 and p.train[-1] == 69_999
    assert json.loads((p.path / "meta.json").read_text())["dtype"] == "uint32"


def test_tokenizer_and_cache_errors(tiny_corpus, tmp_path):
    with pytest.raises(KeelError, match="unknown tokenizer 'wordpiece'"):
        prepare_tokens(str(tiny_corpus), "wordpiece", cache_dir=tmp_path)
    with pytest.raises(KeelError, match="needs vocab_size >= 257"):
        prepare_tokens(str(tiny_corpus), "bpe", cache_dir=tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(KeelError, match="cannot create the token cache"):
        prepare_tokens(str(tiny_corpus), cache_dir=tmp_path / "a-file" / "cache")
    with pytest.raises(KeelError, match="does not exist"):
        prepare_tokens(str(tmp_path / "missing"), cache_dir=tmp_path)
