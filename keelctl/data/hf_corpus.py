"""Hugging Face datasets as streamed corpora: `hf:NAME[:CONFIG][@REVISION]`.

NAME is a hub dataset or a local folder of data files (both read with datasets.load_dataset
and streaming=True: rows arrive as they are read, nothing is converted or held), or a folder
written by Dataset/DatasetDict.save_to_disk (datasets.load_from_disk: memory-mapped arrow,
fully offline). A row's key is its index in the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from keelctl.errors import KeelError

VALIDATION_SPLIT = "validation"
_BATCH = 1000


def hf_documents(name_spec: str, text_field: str, hf_split: str) -> Iterator[tuple[str, str]]:
    """(row index, text) of the split `hf_split`, in row order."""
    splits, label = _open(name_spec, hf_split)
    if hf_split not in splits:
        raise KeelError(
            f"{label} has no split {hf_split!r}; available: {', '.join(splits)} (set data.split)"
        )
    return _rows(splits[hf_split], text_field, label)


def hf_validation_documents(
    name_spec: str, text_field: str, hf_split: str
) -> Iterator[tuple[str, str]] | None:
    """The dataset's own 'validation' split, when it has one and hf_split is another."""
    splits, label = _open(name_spec, hf_split)
    if hf_split == VALIDATION_SPLIT or VALIDATION_SPLIT not in splits:
        return None
    return _rows(splits[VALIDATION_SPLIT], text_field, label)


def hf_fingerprint(name_spec: str, hf_split: str) -> dict:
    """A local folder: its files' paths, sizes and mtimes. A hub dataset: name, config, split
    and revision (unpinned, a new upload under the same name is not noticed; docs/data.md)."""
    name, config, revision = parse_hf_spec(name_spec)
    path = Path(name).expanduser()
    fingerprint = {"hf": name, "config": config, "split": hf_split, "revision": revision}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        fingerprint["files"] = [
            [p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files
        ]
    return fingerprint


def hf_size_hint(name_spec: str, hf_split: str) -> int | None:
    path = Path(parse_hf_spec(name_spec)[0]).expanduser()
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    try:
        splits, _ = _open(name_spec, hf_split)
        info = splits[hf_split].info.splits
        return info[hf_split].num_bytes if info and hf_split in info else None
    except (KeelError, KeyError, AttributeError):
        return None


def parse_hf_spec(name_spec: str) -> tuple[str, str | None, str | None]:
    """'NAME[:CONFIG][@REVISION]' -> (NAME, CONFIG, REVISION); a local path may itself hold
    ':' or '@'."""
    if not name_spec:
        raise KeelError("hf: spec needs a dataset name, e.g. hf:roneneldan/TinyStories")
    if Path(name_spec).exists():
        return name_spec, None, None
    revision = None
    if "@" in name_spec:
        name_spec, _, revision = name_spec.rpartition("@")
        if not name_spec or not revision:
            raise KeelError(f"bad hf spec 'hf:{name_spec}@{revision}'; use hf:NAME[:CONFIG]@REV")
    if ":" not in name_spec:
        return name_spec, None, revision
    name, _, config = name_spec.rpartition(":")
    if not name or not config:
        raise KeelError(f"bad hf spec 'hf:{name_spec}'; use hf:NAME or hf:NAME:CONFIG")
    return name, config, revision


def _open(name_spec: str, hf_split: str) -> tuple[dict, str]:
    """({split name: Dataset or IterableDataset}, label); loading failures are KeelErrors."""
    import datasets

    name, config, revision = parse_hf_spec(name_spec)
    label = f"hf dataset {name!r}" + (f" (config {config!r})" if config else "")
    path = Path(name)
    saved = path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(name, config, revision=revision, streaming=True)
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
    splits = dict(loaded) if isinstance(loaded, dict) else {hf_split: loaded}  # one saved Dataset
    return splits, label


def _rows(ds, text_field: str, label: str) -> Iterator[tuple[str, str]]:
    columns = ds.column_names
    if columns is not None and text_field not in columns:
        raise KeelError(
            f"{label} has no column {text_field!r}; columns: {', '.join(columns)} "
            "(set data.text_field)"
        )
    return _row_texts(ds.select_columns([text_field]), text_field, label)


def _row_texts(ds, text_field: str, label: str) -> Iterator[tuple[str, str]]:
    row = 0
    for batch in ds.iter(batch_size=_BATCH):
        if text_field not in batch:
            raise KeelError(f"{label} has no column {text_field!r} (set data.text_field)")
        for text in batch[text_field]:
            if text is not None and not isinstance(text, str):
                kind = type(text).__name__
                raise KeelError(f"{label} column {text_field!r} holds {kind}, not text")
            yield str(row), text or ""
            row += 1


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
