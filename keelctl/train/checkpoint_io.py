"""How checkpoints are written and read (when, and which are kept: checkpoints.py): a file
checkpoint is written to a temporary file, fsynced and renamed over the target
(AtomicCheckpointIO); a sharded one (fsdp, torch.distributed.checkpoint) is a folder that
replaces the previous one atomically by swapping a symbolic link.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from keelctl.atomic import atomic_path
from keelctl.errors import KeelError

SHARDS_SUFFIX = ".shards"  # a sharded checkpoint's folder: .NAME.<id>.shards, NAME a link to it
METADATA_FILE = "meta.pt"  # Lightning's: everything but the weights and optimizer state


def shards_folder(path: Path, token: str) -> Path:
    """The new folder a sharded save of checkpoint `path` writes into before relink."""
    return path.with_name(f".{path.name}.{token}{SHARDS_SUFFIX}")


def relink(path: Path, shards: Path) -> None:
    """Point `path` at the folder `shards` (an atomic rename of a new link over it), then
    delete the folder it pointed at before."""
    old = path.resolve() if path.is_symlink() else None
    _fsync_tree(shards)
    if path.is_dir() and not path.is_symlink():  # a plain folder (not keelctl's layout)
        shutil.rmtree(path)
    link = shards.with_name(shards.name + ".link")
    link.symlink_to(shards.name)
    os.replace(link, path)
    _fsync_tree(path.parent, files=False)
    if old is not None and old != shards.resolve() and old.is_dir():
        shutil.rmtree(old)


def _fsync_tree(folder: Path, files: bool = True) -> None:
    for file in folder.iterdir() if files else ():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_shards(ckpt_dir: Path) -> None:
    """Delete shard folders no checkpoint link points at (left by a kill during a save)."""
    if not ckpt_dir.is_dir():
        return
    for link in ckpt_dir.glob(".*.link"):  # a new link not yet renamed into place
        link.unlink()
    live = {p.resolve() for p in ckpt_dir.iterdir() if p.is_symlink()}
    for folder in ckpt_dir.glob(f".*{SHARDS_SUFFIX}"):
        if folder.resolve() not in live:
            shutil.rmtree(folder, ignore_errors=True)


def read_sharded_checkpoint(path: Path) -> dict:
    """A sharded checkpoint's metadata (meta.pt: step, recipe, tokenizer, loops, callbacks)
    plus `state_dict`: the names and shapes of its weights as meta tensors (no data read).
    Checks that every shard file the index names is there."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        index = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 (DCP raises many types for a missing/bad index)
        raise KeelError(
            f"sharded checkpoint {path} has no readable index (.metadata: {type(e).__name__}); "
            "it is incomplete: delete it, or resume from an earlier checkpoint"
        ) from None
    files = {info.relative_path for info in index.storage_data.values()}
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing or not (path / METADATA_FILE).is_file():
        lacks = missing[0] if missing else METADATA_FILE
        raise KeelError(
            f"sharded checkpoint {path} lacks {lacks} (of {len(files)} shard files); it is "
            "incomplete: copy the whole folder, or resume from an earlier checkpoint"
        )
    meta = torch.load(path / METADATA_FILE, map_location="cpu", weights_only=True)
    prefix = "state_dict."
    meta["state_dict"] = {
        key.removeprefix(prefix): torch.empty(item.size, device="meta")
        for key, item in index.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata)
    }
    return meta


def check_checkpoint_layout(path: Path, saved_strategy: str, strategy: str) -> None:
    """A sharded checkpoint (a folder) resumes under fsdp only, and fsdp (FSDP2) resumes only
    sharded ones: a full-file fsdp checkpoint is from keelctl's earlier FSDP1, whose optimizer
    state is laid out differently."""
    if path.is_dir() and strategy != "fsdp":
        raise KeelError(
            f"{path} is a sharded (FSDP2) checkpoint and trainer.strategy is {strategy}; "
            "resume it with trainer.strategy=fsdp"
        )
    if strategy == "fsdp" and saved_strategy == "fsdp" and not path.is_dir():
        raise KeelError(
            f"{path} is a full-file checkpoint of keelctl's earlier FSDP1 trainer.strategy fsdp; "
            "this keelctl's fsdp (FSDP2) resumes only its sharded checkpoints: resume it with "
            "the keelctl that wrote it, or train afresh"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but a save can never leave a partial checkpoint: torch.save
    streams into a temporary file beside the target, which is fsynced and renamed over it
    (keelctl.atomic.atomic_path). Lightning's own save buffers the whole checkpoint in memory and
    moves it from the system temp dir, which is a copy, not a rename, when that is another file
    system. Loads always use weights_only=True: no code in a checkpoint is ever run."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        with atomic_path(path, needed=tensor_bytes(checkpoint)) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)  # a file object: a refused write is an OSError (errno)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def tensor_bytes(obj) -> int:
    """The bytes of every tensor in a (nested) checkpoint: about the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
