"""Corpus specs -> train/val documents: builtin stdlib, local files, splits, caps, errors."""

from __future__ import annotations

import json
import shutil

import pytest

from keelctl.data import load_documents
from keelctl.data.corpora import load_splits, python_stdlib_documents, split_documents
from keelctl.errors import KeelError


def test_stdlib_split_is_by_file_deterministic_and_nonempty():
    docs = [(k, t) for k, t in python_stdlib_documents() if t.strip()]
    keys = [k for k, _ in docs]
    assert "os.py" in keys and not any("site-packages" in k for k in keys)
    assert keys == sorted(keys)

    # Membership depends on the key (relative path) only: split the keys themselves.
    by_key = split_documents([(k, k) for k in keys], 0.01)
    assert by_key == split_documents([(k, k) for k in keys], 0.01)
    assert not set(by_key.train) & set(by_key.val)
    assert len(by_key.train) + len(by_key.val) == len(keys)
    assert len(by_key.val) == round(0.01 * len(keys))

    text_of = dict(docs)
    assert load_documents("builtin:python-stdlib", "val") == [text_of[k] for k in by_key.val]


def test_split_membership_depends_only_on_keys():
    docs = [(f"f{i}.txt", f"text {i}") for i in range(200)]
    splits = split_documents(docs, 0.1)
    assert len(splits.val) == 20 and not set(splits.train) & set(splits.val)
    # Reordering the input does not move a document across the split.
    assert set(split_documents(docs[::-1], 0.1).val) == set(splits.val)
    # Every split keeps at least one document on each side.
    small = split_documents(docs[:3], 0.01)
    assert len(small.val) == 1 and len(small.train) == 2


def test_directory_corpus_splits_by_file(tiny_corpus):
    train = load_documents(str(tiny_corpus), "train", val_fraction=0.1)
    val = load_documents(str(tiny_corpus), "val", val_fraction=0.1)
    files = {p.read_text() for p in tiny_corpus.glob("*.py")}
    assert len(val) == 4 and len(train) == 36
    assert set(train) | set(val) == files and not set(train) & set(val)


def test_directory_walk_keeps_text_files_only(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# title\nbody\n")
    (tmp_path / "sub" / "b.txt").write_text("plain text\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.txt").write_text("hidden\n")
    s = load_splits(str(tmp_path), val_fraction=0.5)
    assert sorted(s.train + s.val) == ["# title\nbody\n", "plain text\n"]


def test_glob_corpus_split_survives_a_move(tiny_corpus, tmp_path):
    s = load_splits(str(tiny_corpus / "doc_0*.py"), val_fraction=0.2)
    assert len(s.train) + len(s.val) == 10 and len(s.val) == 2
    shutil.copytree(tiny_corpus, tmp_path / "moved")
    assert load_splits(str(tmp_path / "moved" / "doc_0*.py"), val_fraction=0.2) == s


def test_jsonl_documents_use_text_field(tmp_path):
    rows = [{"body": f"story number {i}", "id": i} for i in range(10)] + [{"body": ""}]
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    s = load_splits(str(path), text_field="body", val_fraction=0.2)
    assert sorted(s.train + s.val) == sorted(r["body"] for r in rows[:10])
    assert len(s.val) == 2


def test_single_file_is_split_inside_at_a_line(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100))
    (tmp_path / "one.txt").write_text(text)
    s = load_splits(str(tmp_path / "one.txt"), val_fraction=0.1)
    assert s.train[0] + s.val[0] == text
    assert s.val[0].startswith("line ") and len(s.val[0]) == pytest.approx(0.1 * len(text), rel=0.2)


def test_max_bytes_keeps_first_documents_in_order(tiny_corpus):
    size = (tiny_corpus / "doc_00.py").stat().st_size
    s = load_splits(str(tiny_corpus), max_bytes=2 * size + 10, val_fraction=0.3)
    texts = s.train + s.val
    assert len(texts) == 3 and sum(len(t.encode()) for t in texts) == 2 * size + 10
    assert (tiny_corpus / "doc_00.py").read_text() in texts


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:shakespeare", "unknown builtin corpus 'shakespeare'"),
        ("ftp:somewhere", "unknown corpus spec"),
        ("", "empty corpus spec"),
        ("/no/such/corpus/dir", "does not exist"),
        ("/no/such/dir/*.txt", "matched no files"),
        ("hf:", "needs a dataset name"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(KeelError, match=message):
        load_documents(spec, "train")


def test_empty_corpus(tmp_path):
    with pytest.raises(KeelError, match="has no text"):
        load_documents(str(tmp_path), "train")
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("  \n")
    with pytest.raises(KeelError, match="has no text"):
        load_documents(str(tmp_path), "train")


def test_bad_arguments(tiny_corpus, tmp_path):
    with pytest.raises(KeelError, match="unknown split"):
        load_documents(str(tiny_corpus), "test")
    with pytest.raises(KeelError, match="val_fraction"):
        load_documents(str(tiny_corpus), "train", val_fraction=1.0)
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"content": "no text key"}\n')
    with pytest.raises(KeelError, match="x.jsonl:2 has no text field 'text'"):
        load_documents(str(tmp_path / "x.jsonl"), "train")
    (tmp_path / "y.jsonl").write_text("{not json\n")
    with pytest.raises(KeelError, match="y.jsonl:1 is not valid JSON"):
        load_documents(str(tmp_path / "y.jsonl"), "train")
