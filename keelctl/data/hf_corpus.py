"""Hugging Face datasets as corpora: `hf:NAME[:CONFIG]`.

NAME is a hub dataset (loaded with datasets.load_dataset, so it needs the network or the HF
cache), a local folder of data files (also load_dataset), or a folder written by
Dataset/DatasetDict.save_to_disk (datasets.load_from_disk, fully offline).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from keelctl.errors import KeelError

VALIDATION_SPLIT = "validation"
_BATCH = 1000


def load_hf_splits(
    name_spec: str, *, text_field: str, hf_split: str, max_bytes: int | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]] | None]:
    """(train documents, the dataset's validation documents or None) as (key, text) pairs.

    Train is the `hf_split` split, its first documents capped at max_bytes; validation is the
    dataset's own 'validation' split when it has one and hf_split is another split."""
    name, config = parse_hf_spec(name_spec)
    loaded = _load(name, config)
    splits = loaded if isinstance(loaded, dict) else {hf_split: loaded}  # one saved Dataset
    label = f"hf dataset {name!r}" + (f" (config {config!r})" if config else "")
    if hf_split not in splits:
        raise KeelError(
            f"{label} has no split {hf_split!r}; available: {', '.join(splits)} (set data.split)"
        )
    train = list(_documents(splits[hf_split], text_field, label, max_bytes))
    val = None
    if hf_split != VALIDATION_SPLIT and VALIDATION_SPLIT in splits:
        val = list(_documents(splits[VALIDATION_SPLIT], text_field, label, None))
    return train, val


def parse_hf_spec(name_spec: str) -> tuple[str, str | None]:
    """'NAME[:CONFIG]' -> (NAME, CONFIG); a local path may itself contain ':'."""
    if not name_spec:
        raise KeelError("hf: spec needs a dataset name, e.g. hf:roneneldan/TinyStories")
    if Path(name_spec).exists() or ":" not in name_spec:
        return name_spec, None
    name, _, config = name_spec.rpartition(":")
    if not name or not config:
        raise KeelError(f"bad hf spec 'hf:{name_spec}'; use hf:NAME or hf:NAME:CONFIG")
    return name, config


def _load(name: str, config: str | None):
    """A datasets.Dataset or DatasetDict; every loading failure becomes a KeelError."""
    import datasets

    path = Path(name)
    saved = path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(name, config)
    except datasets.exceptions.DatasetNotFoundError as e:
        raise KeelError(
            f"hf dataset {name!r} was not found on the Hugging Face hub or in the local cache "
            f"({_first_line(e)}); check the name, log in for gated datasets, or, offline, use "
            "hf:DIR with a dataset saved by save_to_disk"
        ) from None
    except (ConnectionError, OSError, TimeoutError) as e:
        raise KeelError(
            f"hf dataset {name!r} could not be loaded: the network or the Hugging Face hub is "
            f"unreachable and it is not in the local cache ({type(e).__name__}: {_first_line(e)}); "
            "connect to the network, or use hf:DIR with a dataset saved by save_to_disk"
        ) from None
    except ValueError as e:  # e.g. an unknown config name
        raise KeelError(f"hf dataset {name!r}: {_first_line(e)}") from None
    return loaded


def _documents(ds, text_field: str, label: str, max_bytes: int | None) -> Iterator[tuple[str, str]]:
    """(row index, text) in row order, stopping once max_bytes of UTF-8 have been yielded."""
    if text_field not in ds.column_names:
        raise KeelError(
            f"{label} has no column {text_field!r}; columns: {', '.join(ds.column_names)} "
            "(set data.text_field)"
        )
    row, total = 0, 0
    for batch in ds.select_columns([text_field]).iter(batch_size=_BATCH):
        for text in batch[text_field]:
            if text is not None and not isinstance(text, str):
                kind = type(text).__name__
                raise KeelError(f"{label} column {text_field!r} holds {kind}, not text")
            yield str(row), text or ""
            row += 1
            total += len((text or "").encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                return


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
