"""The token store: streamed prepare equals the in-memory split and tokens, resumes after a
kill to the identical bytes, is found without reading the corpus, and reads as one array."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from store_helpers import documents_from_tokens, folder_digest, write_tokenizer_json

import keelctl.data.build as build
from keelctl.data import ByteTokenizer, ShardedTokens, TrainWindows, prepare_tokens
from keelctl.data.corpora import Corpus, load_splits
from keelctl.data.encode import byte_tokens
from keelctl.data.tokenizers import BPETokenizer
from keelctl.errors import KeelError

TINY_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-keel.yaml"


@pytest.fixture
def jsonl_corpus(tmp_path):
    """Two jsonl files of 150 short records (a few empty), like a web-text dump."""
    folder = tmp_path / "jsonl"
    folder.mkdir()
    for f in range(2):
        rows = [{"text": "" if i % 37 == 5 else f"record {f}-{i}: " + "héllo wörld " * (i % 7)}
                for i in range(150)]  # fmt: skip
        (folder / f"part{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def parquet_corpus(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [f"row {i}: " + "ab✓ " * (i % 9) for i in range(120)]}), path)
    return path


@pytest.fixture
def saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"story {i}: " + "once upon a time " * (i % 4) for i in range(80)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "ds")
    return f"hf:{tmp_path / 'ds'}"


@pytest.mark.parametrize(
    "corpus", ["tiny_corpus", "jsonl_corpus", "parquet_corpus", "saved_dataset"]
)
def test_streamed_store_equals_in_memory_split_and_tokens(corpus, request, tmp_path):
    spec = str(request.getfixturevalue(corpus))
    p = prepare_tokens(spec, val_fraction=0.1, cache_dir=tmp_path / "cache", workers=1)
    splits = load_splits(spec, val_fraction=0.1)
    assert isinstance(p.tokenizer, ByteTokenizer) and p.train.dtype == np.uint16
    assert np.array_equal(np.asarray(p.train), byte_tokens(splits.train, 256))
    assert np.array_equal(np.asarray(p.val), byte_tokens(splits.val, 256))
    m = p.meta["splits"]
    assert m["train"]["docs"] == len(splits.train) and m["val"]["docs"] == len(splits.val)
    assert m["train"]["bytes"] == sum(len(t.encode()) for t in splits.train)
    assert m["train"]["tokens"] == m["train"]["bytes"] + m["train"]["docs"] == len(p.train)
    assert p.meta["format"] == 2 and p.meta["tokenizer"]["kind"] == "byte"
    assert not (p.path.parent / f"{p.path.name}.partial").exists()


def test_bpe_store_trains_on_the_training_documents_like_the_in_memory_path(tiny_corpus, tmp_path):
    p = prepare_tokens(
        str(tiny_corpus), "bpe", vocab_size=400, val_fraction=0.1, cache_dir=tmp_path, workers=1
    )
    splits = load_splits(str(tiny_corpus), val_fraction=0.1)
    reference = BPETokenizer.train(splits.train, 400)
    assert p.tokenizer.to_dict() == reference.to_dict()
    assert documents_from_tokens(p.val, p.tokenizer) == splits.val
    again = prepare_tokens(str(tiny_corpus), "bpe", vocab_size=400, val_fraction=0.1,
                           cache_dir=tmp_path)  # fmt: skip
    assert again.path == p.path and again.tokenizer.to_dict() == p.tokenizer.to_dict()


def test_bpe_sample_is_bounded_and_leaves_out_validation_documents(jsonl_corpus):
    corpus = Corpus(str(jsonl_corpus))
    params = {"val_fraction": 0.1, "max_bytes": None}
    sample = build.bpe_sample(corpus, params, train_bytes=2000)
    # The first 2000 bytes of documents, less the ~2 x val_fraction left out.
    assert 1000 < sum(len(t.encode()) for t in sample) < 2000 + 200
    val = set(load_splits(str(jsonl_corpus), val_fraction=0.1).val)
    assert sample and not val & set(sample)


def test_workers_and_shard_size_do_not_change_the_tokens(jsonl_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "BATCH_CHARS", 500)  # many batches, so the pool is used
    one = prepare_tokens(str(jsonl_corpus), val_fraction=0.1, cache_dir=tmp_path / "a", workers=1)
    two = prepare_tokens(
        str(jsonl_corpus), val_fraction=0.1, cache_dir=tmp_path / "b", workers=2,
        shard_tokens=1024,
    )  # fmt: skip
    shards = two.meta["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] == 1024 for s in shards[:-1])
    assert sum(s["docs"] for s in shards) == one.meta["splits"]["train"]["docs"]
    assert isinstance(two.train, ShardedTokens) and len(two.train) == len(one.train)
    assert np.array_equal(np.asarray(two.train), np.asarray(one.train))
    for a, b in [(0, 5), (1020, 1030), (1024, 3000), (len(one.train) - 7, len(one.train))]:
        assert np.array_equal(two.train[a:b], one.train[a:b])

    # DataLoader workers get file names, not a copy of the tokens.
    blob = pickle.dumps(TrainWindows(two.train, 64, seed=7, length=50))
    reference = TrainWindows(one.train, 64, seed=7, length=50)[3][0]
    assert len(blob) < 5000 and np.array_equal(pickle.loads(blob)[3][0], reference)

    # Training windows are a function of (seed, index) over the split's token stream.
    w1, w2 = (TrainWindows(p.train, 64, seed=7, length=50) for p in (one, two))
    for i in range(50):
        assert all(np.array_equal(a, b) for a, b in zip(w1[i], w2[i], strict=True))


def test_store_is_found_without_reading_the_corpus(tiny_corpus, tmp_path, monkeypatch):
    first = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path, workers=1)

    def no_reading(self):
        raise AssertionError("the corpus was read although the store exists")

    monkeypatch.setattr(Corpus, "documents", no_reading)
    again = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    assert again.path == first.path and again.meta == first.meta
    # A run's own tokenizer (eval, resume) finds the store its recipe made.
    given = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path,
                           tokenizer=ByteTokenizer())  # fmt: skip
    assert given.path == first.path
    assert sorted(p.name for p in (tmp_path / "stores").iterdir()) == [
        first.path.name, f"{first.path.name}.lock"
    ]  # fmt: skip


def test_changed_file_or_split_gets_a_new_store(tiny_corpus, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    base = prepare_tokens(str(corpus), val_fraction=0.1, cache_dir=tmp_path, workers=1)
    (corpus / "doc_00.py").write_text("changed = True\n")
    changed = prepare_tokens(str(corpus), val_fraction=0.1, cache_dir=tmp_path, workers=1)
    other = prepare_tokens(str(corpus), val_fraction=0.2, cache_dir=tmp_path, workers=1)
    assert len({base.path, changed.path, other.path}) == 3


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import keelctl.data.build as build
    from keelctl.data import prepare_tokens

    build.BATCH_CHARS = 400
    corpus, cache, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = 0

    def progress(phase, done, total, tokens):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    p = prepare_tokens(corpus, val_fraction=0.1, cache_dir=cache, workers=2,
                       shard_tokens=2048, progress=progress)
    print(p.path)
    """
)


def test_killed_prepare_resumes_to_the_identical_store(jsonl_corpus, tmp_path):
    def run(cache, kill_at):
        return subprocess.run(
            [sys.executable, "-c", _KILLER, str(jsonl_corpus), str(cache), str(kill_at)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    clean = run(tmp_path / "clean", 0)
    assert clean.returncode == 0, clean.stderr
    expected = folder_digest(Path(clean.stdout.strip()))
    killed = tmp_path / "killed"
    # Killed while staging (call 3), then while writing shards (a later call), then finished.
    for kill_at in (3, 40):
        result = run(killed, kill_at)
        assert result.returncode == -9, result.stderr
        partial = next((killed / "stores").glob("*.partial"))
        for shard in partial.glob("*.bin"):  # only complete shards carry a final name
            assert shard.stat().st_size == 2048 * 2
    finished = run(killed, 0)
    assert finished.returncode == 0, finished.stderr
    assert folder_digest(Path(finished.stdout.strip())) == expected


def test_pretrained_tokenizer_round_trips_through_prepare_train_and_eval(
    tiny_corpus, tiny_train_sets, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from keelctl.cli import app
    from keelctl.runs import Run

    texts = [p.read_text() for p in sorted(tiny_corpus.glob("*.py"))[:10]]
    tok_path = write_tokenizer_json(tmp_path / "tokenizer.json", texts, vocab_size=300)
    sets = [*tiny_train_sets(tmp_path / "cache", 3), f"data.tokenizer={tok_path}",
            "model.vocab_size=320", "trainer.val_every=3"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    recipe = str(TINY_RECIPE)
    runner = CliRunner()

    prepared = runner.invoke(app, ["prepare", recipe, *args, "--workers", "1"])
    assert prepared.exit_code == 0, prepared.output + prepared.stderr
    store = next((tmp_path / "cache" / "stores").glob("*/manifest.json")).parent
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "pretrained" and manifest["dtype"] == "uint16"

    def no_reading(self):
        raise AssertionError("train read the corpus although the store was prepared")

    monkeypatch.setattr(Corpus, "documents", no_reading)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", recipe, *args, "--run-dir", str(run)])
    assert trained.exit_code == 0, trained.output + trained.stderr
    _, tokenizer = Run(run).model_meta
    original = json.loads(tok_path.read_text())
    assert tokenizer.kind == "pretrained" and tokenizer.eot_id == original["added_tokens"][0]["id"]
    assert json.loads(tokenizer.to_dict()["tokenizer_json"])["model"] == original["model"]
    text = "def function_1_2(x):\n    return x\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text

    monkeypatch.undo()  # eval reads the held-out documents of the run's corpus
    evaluated = runner.invoke(app, ["eval", str(run), "--output", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    (result,) = report["runs"]
    ppl = result["perplexity"]["ppl"]
    assert 1 < ppl < 320  # finite, below uniform over the vocabulary


def _prepare_and_report(corpus: str, cache: str, report: str) -> None:
    """One 'rank': prepare, and note in `report` whether this process tokenized anything."""
    tokenized = []
    p = prepare_tokens(corpus, val_fraction=0.1, cache_dir=cache, workers=1,
                       progress=lambda phase, *_: tokenized.append(phase))  # fmt: skip
    Path(report).write_text(json.dumps({"path": str(p.path), "tokenized": bool(tokenized)}))


def test_concurrent_prepares_build_the_store_once(jsonl_corpus, tmp_path):
    import multiprocessing

    reports = [tmp_path / f"rank{i}.json" for i in range(3)]
    ranks = [
        multiprocessing.get_context("fork").Process(
            target=_prepare_and_report, args=(str(jsonl_corpus), str(tmp_path / "c"), str(r))
        )
        for r in reports
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=60)
    results = [json.loads(r.read_text()) for r in reports]
    assert len({r["path"] for r in results}) == 1
    assert sum(r["tokenized"] for r in results) == 1  # the others waited on the lock


def test_rerun_tokenizes_only_the_chunks_a_kill_left_undone(jsonl_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "BATCH_CHARS", 400)
    encoded = []
    real_encode = build.encode_documents

    def counting_encode(batch, *args):
        encoded.append(len(batch))
        return real_encode(batch, *args)

    def stop_after_five(phase, *_):
        if len(encoded) == 5:
            raise KeyboardInterrupt  # what Ctrl-C does; SIGKILL is the subprocess test above

    monkeypatch.setattr(build, "encode_documents", counting_encode)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(str(jsonl_corpus), val_fraction=0.1, cache_dir=tmp_path, workers=1,
                       progress=stop_after_five)  # fmt: skip
    p = prepare_tokens(str(jsonl_corpus), val_fraction=0.1, cache_dir=tmp_path, workers=1)
    # Every document was tokenized exactly once over both runs: the five finished chunks
    # were not redone.
    assert len(encoded) > 5
    assert sum(encoded) == p.meta["splits"]["train"]["docs"] + p.meta["splits"]["val"]["docs"]


def test_hub_dataset_fingerprint_names_config_split_and_pinned_revision():
    from keelctl.data.hf_corpus import hf_fingerprint, parse_hf_spec

    assert parse_hf_spec("HuggingFaceFW/fineweb-edu:sample-10BT@v1.2.0") == (
        "HuggingFaceFW/fineweb-edu", "sample-10BT", "v1.2.0"
    )  # fmt: skip
    assert parse_hf_spec("roneneldan/TinyStories") == ("roneneldan/TinyStories", None, None)
    pinned = Corpus("hf:HuggingFaceFW/fineweb-edu:sample-10BT@abc123").fingerprint()
    assert pinned == {"hf": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT",
                      "split": "train", "revision": "abc123"}  # fmt: skip
    assert hf_fingerprint("HuggingFaceFW/fineweb-edu:sample-10BT", "train")["revision"] is None


def test_hub_tokenizer_name_loads_from_the_hf_cache_offline(tmp_path, monkeypatch, tiny_corpus):
    import huggingface_hub.constants

    from keelctl.data.tokenizers import load_pretrained

    snapshot = tmp_path / "hub" / "models--someone--tok" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    texts = [p.read_text() for p in sorted(tiny_corpus.glob("*.py"))[:5]]
    write_tokenizer_json(snapshot / "tokenizer.json", texts)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = load_pretrained("someone/tok")
    assert tok.kind == "pretrained" and tok.source == "someone/tok" and tok.eot_id == 0
    with pytest.raises(KeelError, match="'someone/missing' could not be loaded.*local tokenizer"):
        load_pretrained("someone/missing")


def test_a_partial_build_for_another_tokenizer_is_not_resumed(tiny_corpus, tmp_path):
    store = tmp_path / "store"
    tok_path = write_tokenizer_json(tmp_path / "tok.json", ["some text " * 50], vocab_size=270)

    def stop(phase, *_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a byte build killed half way
        prepare_tokens(str(tiny_corpus), val_fraction=0.1, store=store, workers=1, progress=stop)
    assert (tmp_path / "store.partial" / "tokenizer.json").is_file()
    p = prepare_tokens(str(tiny_corpus), str(tok_path), val_fraction=0.1, store=store, workers=1)
    assert p.tokenizer.kind == "pretrained" and p.meta["tokenizer"]["kind"] == "pretrained"
    splits = load_splits(str(tiny_corpus), val_fraction=0.1)
    assert documents_from_tokens(p.val, p.tokenizer) == splits.val
