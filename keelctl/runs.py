"""The run directory: the contract between commands (layout in docs/runs.md).

    RUN/config.yaml          resolved recipe (train)
    RUN/model.json           {"model": ModelConfig, "tokenizer": {...}, "keelctl_version", ...}
    RUN/model.safetensors    final weights, loadable without Lightning
    RUN/metrics.csv          Lightning CSVLogger output
    RUN/checkpoints/         last.ckpt, best.ckpt (Lightning)
    RUN/grads.csv            per-sub-layer gradient norms (plot-grads callback)
    RUN/summary.json         final numbers of the training run

Every write here is atomic: a temporary file in the same folder, then os.replace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import ValidationError

from keelctl.config import format_validation_error
from keelctl.data.tokenizers import Tokenizer, tokenizer_from_dict
from keelctl.errors import KeelError
from keelctl.model import ModelConfig, Transformer, build_model

# The process umask can only be read by setting it; restore it at once.
_UMASK = os.umask(0)
os.umask(_UMASK)

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
CONFIG_YAML = "config.yaml"
METRICS_CSV = "metrics.csv"
GRADS_CSV = "grads.csv"
SUMMARY_JSON = "summary.json"
CHECKPOINTS = "checkpoints"


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
        raise UnwritablePath(e.errno, e.strerror, str(path)) from None
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


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed atomic write left in `folder`; returns them."""
    stale = sorted(Path(folder).glob(f".*{_PARTIAL_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Model keys added after runs were recorded: left out of config_hash at these defaults, so a
# model that does not use them keeps the hash its reports and results already show.
_HASH_IGNORED_DEFAULTS = {"stream_dtype": "fp32", "norm_dtype": "fp32"}


def config_hash(cfg: ModelConfig) -> str:
    """Short stable hash of a model config (names a model shape in reports)."""
    data = cfg.model_dump(mode="json")
    for key, default in _HASH_IGNORED_DEFAULTS.items():
        if data.get(key) == default:
            del data[key]
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_model(
    run_dir: str | os.PathLike, model: Transformer, tokenizer: Tokenizer, **extra
) -> None:
    """Write model.safetensors and model.json (config + tokenizer + extra fields)."""
    from safetensors.torch import save_model as st_save_model

    from keelctl import __version__

    run_dir = Path(run_dir)
    needed = sum(t.nbytes for t in model.state_dict().values())
    with atomic_path(run_dir / MODEL_WEIGHTS, needed) as tmp:
        st_save_model(model, str(tmp))
    meta = {
        "model": model.config.model_dump(mode="json"),
        "tokenizer": tokenizer.to_dict(),
        "config_hash": config_hash(model.config),
        "keelctl_version": __version__,
        **extra,
    }
    atomic_write_json(run_dir / MODEL_JSON, meta)


def read_model_json(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / MODEL_JSON
    if not Path(run_dir).is_dir():
        raise KeelError(
            f"run dir {run_dir} does not exist; pass a directory made by `keelctl train`"
        )
    if not path.is_file():
        raise KeelError(f"{path} is missing; is {run_dir} a finished `keelctl train` run?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KeelError(f"{path} is not valid JSON ({e.msg}); re-export the run") from e


_MODEL_JSON_HINT = "it was edited or comes from another tool: restore it, or train the run again"


def read_model_meta(run_dir: str | os.PathLike) -> tuple[ModelConfig, Tokenizer]:
    """The run's ModelConfig and tokenizer from model.json, without loading the weights."""
    meta = read_model_json(run_dir)
    try:
        return ModelConfig(**meta["model"]), tokenizer_from_dict(meta["tokenizer"])
    except ValidationError as e:
        what = format_validation_error(e, ModelConfig, "model")
        raise KeelError(f"{Path(run_dir) / MODEL_JSON}: {what}; {_MODEL_JSON_HINT}") from None
    except (KeyError, ValueError) as e:
        raise KeelError(
            f"{Path(run_dir) / MODEL_JSON} is not a keelctl model description (no or bad {e}); "
            f"{_MODEL_JSON_HINT}"
        ) from None


def load_model(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Transformer, Tokenizer]:
    """Load (model, tokenizer) from a run dir, in eval mode, without Lightning."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as st_load_model

    cfg, tokenizer = read_model_meta(run_dir)
    weights = Path(run_dir) / MODEL_WEIGHTS
    if not weights.is_file():
        raise KeelError(f"{weights} is missing; is {run_dir} a finished `keelctl train` run?")
    model = build_model(cfg)
    try:
        st_load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise KeelError(
            f"cannot load {weights} ({str(e).splitlines()[0]}); the file is damaged or does not "
            f"match {MODEL_JSON}: restore both from the same run, or train it again"
        ) from e
    return model.to(device).eval(), tokenizer
