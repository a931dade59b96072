"""Atomic writes, the one way keelctl writes a file or folder that someone reads later: into a
temporary beside the target, then renamed over it, so a reader (or a rerun after a kill) finds
the old content or the new, never a part. A write the file system refuses says so in one line."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keelctl.errors import KeelError

# The process umask can only be read by setting it; restore it at once.
_UMASK = os.umask(0)
os.umask(_UMASK)

_PARTIAL_SUFFIX = ".tmp"


class UnwritablePath(KeelError, OSError):
    """An output's folder cannot be made or written to. A KeelError (the CLI shows one line),
    and an OSError (with errno and strerror) for callers that word their own message."""

    def __str__(self) -> str:
        return f"cannot write {self.filename} ({self.strerror}); choose another location"


class WriteFailed(KeelError):
    """A write that the file system refused part way (out of space, an I/O error, a folder gone),
    said in one line with what it needed and what is free. Nothing of it is left behind."""

    def __init__(self, path: Path, error: Exception, needed: int | None, written: int):
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
        except OSError:
            free = "its folder cannot be read"
        need = f"about {needed:,} bytes" if needed else f"more than the {written:,} bytes written"
        why = _reason(error)
        super().__init__(
            f"cannot write {path} ({why}): it needs {need} and {path.parent} has {free}; free "
            "space or choose another location (the previous file there is intact)"
        )


def _reason(e: BaseException) -> str:
    """The OS's words for a failed write (torch.save wraps the OSError of a file object's write
    in a RuntimeError of its C++ writer), else the error's first line."""
    cause = e
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause.strerror
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def is_write_failure(e: Exception) -> bool:
    """An OSError, or what torch.save (its C++ writer: "inline_container ... unexpected pos")
    and safetensors ("I/O error ... (os error 28)") raise when the file system refuses a write."""
    text = str(e)
    return isinstance(e, OSError) or "inline_container" in text or "os error" in text


def _unwritable(path: Path, e: OSError) -> UnwritablePath:
    return UnwritablePath(e.errno, e.strerror, str(path))


@contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.
    The data is fsynced before the rename and the folder after it, so after a crash or kill
    `path` holds either its old or its new content, never a part. A write the file system
    refuses (ENOSPC, EIO, ...) raises WriteFailed, saying `needed` bytes (the caller's estimate
    of the file's size) and the bytes free."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _unwritable(path, e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except Exception as e:
        if isinstance(e, KeelError) or not is_write_failure(e):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        raise WriteFailed(path, e, needed, written) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """atomic_path for a folder: yield an empty temporary folder beside `path`, which replaces
    `path` (its old folder, if any, is deleted) only if the block succeeds. A refused write
    raises WriteFailed and leaves the old folder in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX, dir=path.parent)
        )
    except OSError as e:
        raise _unwritable(path, e) from None
    old = None
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700: read like any folder
            item.chmod((0o777 if item.is_dir() else 0o666) & ~_UMASK)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except Exception as e:
        if isinstance(e, KeelError) or not is_write_failure(e):
            raise
        if old is not None and not path.exists():  # put the previous folder back
            os.replace(old / path.name, path)
        raise WriteFailed(path, e, needed, 0) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic write left in `folder`; returns them."""
    stale = sorted(Path(folder).glob(f".*{_PARTIAL_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
