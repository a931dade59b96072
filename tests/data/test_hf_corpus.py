"""hf:NAME[:CONFIG] corpora, all offline: save_to_disk folders, local data files, no hub."""

from __future__ import annotations

import json
import time

import pytest

from keelctl.data import load_documents
from keelctl.data.corpora import load_splits
from keelctl.errors import KeelError

datasets = pytest.importorskip("datasets")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub access and a throwaway HF cache. datasets reads the env at import, so the
    module-level flags are patched too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _texts(n, prefix="doc"):
    return [f"{prefix} {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(n)]


def test_saved_dataset_is_split_by_held_out_fraction(offline, tmp_path):
    texts = _texts(50)
    datasets.Dataset.from_dict({"text": texts, "n": list(range(50))}).save_to_disk(tmp_path / "ds")
    s = load_splits(f"hf:{tmp_path / 'ds'}", val_fraction=0.1)
    assert len(s.val) == 5 and sorted(s.train + s.val) == sorted(texts)
    assert s == load_splits(f"hf:{tmp_path / 'ds'}", val_fraction=0.1)


def test_saved_dataset_dict_uses_its_validation_split(offline, tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"story": _texts(30, "train")}),
            "validation": datasets.Dataset.from_dict({"story": _texts(4, "val")}),
        }
    )
    dd.save_to_disk(tmp_path / "dd")
    spec = f"hf:{tmp_path / 'dd'}"
    assert load_documents(spec, "train", text_field="story") == _texts(30, "train")
    assert load_documents(spec, "val", text_field="story") == _texts(4, "val")
    with pytest.raises(KeelError, match="no split 'test'; available: train, validation"):
        load_documents(spec, "train", text_field="story", hf_split="test")
    with pytest.raises(KeelError, match="no column 'text'; columns: story"):
        load_documents(spec, "train")


def test_load_dataset_from_local_data_files(offline, tmp_path):
    data = tmp_path / "jsonfiles"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(20)))
    s = load_splits(f"hf:{data}", val_fraction=0.1)
    assert len(s.val) == 2 and sorted(s.train + s.val) == sorted(_texts(20))


def test_max_bytes_caps_hf_documents(offline, tmp_path):
    texts = _texts(50)
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "ds")
    s = load_splits(f"hf:{tmp_path / 'ds'}", max_bytes=100, val_fraction=0.3)
    assert sum(len(t.encode()) for t in s.train + s.val) == 100


def test_unreachable_hub_is_a_clear_error_not_a_hang(offline):
    start = time.monotonic()
    with pytest.raises(KeelError, match="hf dataset 'nobody/no-such-dataset-xyz'.*unreachable"):
        load_documents("hf:nobody/no-such-dataset-xyz:en", "train")
    assert time.monotonic() - start < 10
