"""`keelctl prepare` answers each bad input with one line and exit 2, and leaves every shard of
an existing store as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_helpers import folder_digest, write_tokenizer_json
from typer.testing import CliRunner

from keelctl.cli import app

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"


def prepare(*sets: str):
    args = ["prepare", str(TINY), "--workers", "1", "--set", "data.max_bytes=null"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def store(tiny_corpus, tmp_path):
    """A finished store at an explicit folder, and its files' digests."""
    folder = tmp_path / "store"
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={folder}", "data.val_fraction=0.1")
    assert result.exit_code == 0, result.output
    return folder, folder_digest(folder)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n")
    result = prepare(f"data.corpus={tmp_path / 'empty'}", f"data.cache_dir={tmp_path / 'c'}")
    assert_one_line_error(result, "has no text")
    assert not list((tmp_path / "c" / "stores").glob("*/*.bin"))


def test_jsonl_without_the_text_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"body": "some text"}) + "\n")
    result = prepare(f"data.corpus={path}", f"data.cache_dir={tmp_path / 'c'}")
    assert_one_line_error(result, "no text field 'text'", "set data.text_field")


def test_parquet_without_the_text_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["some text", "more text"]}), path)
    result = prepare(f"data.corpus={path}", f"data.cache_dir={tmp_path / 'c'}")
    assert_one_line_error(result, "no column 'text'; columns: body", "set data.text_field")


def test_tokenizer_path_that_is_not_a_tokenizer(tiny_corpus, tmp_path):
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"hello": "world"}')
    result = prepare(f"data.corpus={tiny_corpus}", f"data.tokenizer={bogus}")
    assert_one_line_error(result, "is not a Hugging Face tokenizer.json")
    (tmp_path / "no-tokenizer").mkdir()
    result = prepare(f"data.corpus={tiny_corpus}", f"data.tokenizer={tmp_path / 'no-tokenizer'}")
    assert_one_line_error(result, "a folder without tokenizer.json")


def test_tokenizer_larger_than_the_model_vocabulary(tiny_corpus, tmp_path):
    tok = write_tokenizer_json(tmp_path / "tok.json", ["some text " * 50], vocab_size=300)
    cache = tmp_path / "c"
    result = prepare(f"data.corpus={tiny_corpus}", f"data.tokenizer={tok}",
                     f"data.cache_dir={cache}")  # fmt: skip
    assert_one_line_error(result, "model.vocab_size is 257", "raise model.vocab_size")
    assert not cache.exists()  # refused before tokenizing anything


def test_store_made_with_another_tokenizer(store, tiny_corpus, tmp_path):
    folder, before = store
    tok = write_tokenizer_json(tmp_path / "tok.json", ["some text " * 50], vocab_size=258)
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={folder}",
                     "data.val_fraction=0.1", f"data.tokenizer={tok}",
                     "model.vocab_size=320")  # fmt: skip
    assert_one_line_error(result, "was made with another tokenizer (byte)")
    assert folder_digest(folder) == before


def test_truncated_shard(store, tiny_corpus):
    folder, _ = store
    shard = folder / "train-000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    before = folder_digest(folder)
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={folder}", "data.val_fraction=0.1")
    assert_one_line_error(result, "train-000000.bin", "truncated", "run keelctl prepare again")
    assert folder_digest(folder) == before


def test_store_of_an_older_format_version(store, tiny_corpus):
    folder, _ = store
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    before = folder_digest(folder)
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={folder}", "data.val_fraction=0.1")
    assert_one_line_error(result, "format version 1, this keelctl reads 2")
    assert folder_digest(folder) == before


def test_unwritable_store_folder(tiny_corpus, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={tmp_path / 'a-file' / 'store'}")
    assert_one_line_error(result, "cannot write the token store", "writable folder")


def test_folder_that_is_not_a_store(tiny_corpus, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = prepare(f"data.corpus={tiny_corpus}", f"data.store={tmp_path / 'busy'}")
    assert_one_line_error(result, "holds no manifest.json")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
