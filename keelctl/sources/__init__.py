"""Model sources: one interface over a keelctl run dir and a Hugging Face causal LM, so every
analysis (ablate-layers, eval, plot-grads) takes either, mixed in one call.

A source spec is a run dir (made by `keelctl train`), a local transformers folder (config.json
+ weights + tokenizer), or `hf:NAME[@REVISION]` (the hub or its cache). Opening a source is
cheap (config and tokenizer only, every check that needs no weights); `load()` reads the
weights, one model in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

from keelctl.errors import KeelError
from keelctl.runs import CONFIG_YAML, MODEL_JSON
from keelctl.sources.base import ModelSource, SourceModel
from keelctl.sources.keel import KeelSource

HF_PREFIX = "hf:"

__all__ = [
    "HF_PREFIX",
    "KeelSource",
    "ModelSource",
    "SourceModel",
    "is_transformers",
    "open_source",
]


def is_transformers(spec: str | Path) -> bool:
    """hf:NAME, or a folder with a transformers config.json that is not a keelctl run."""
    path = Path(str(spec))
    if str(spec).startswith(HF_PREFIX):
        return True
    run_files = (MODEL_JSON, CONFIG_YAML)
    return (path / "config.json").is_file() and not any((path / f).exists() for f in run_files)


def open_source(spec: str | Path, *, dtype: str = "float32", device_map: str | None = None):
    """The source named by `spec`: a run dir, a transformers folder or hf:NAME[@REVISION].
    dtype and device_map apply to transformers models (a run loads as it was saved)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        from keelctl.sources.hf import HFSource

        name, _, revision = text[len(HF_PREFIX) :].partition("@")
        if not name:
            raise KeelError(f"{text!r} names no model; write hf:NAME or hf:NAME@REVISION")
        return HFSource(text, name, revision or None, dtype=dtype, device_map=device_map)
    path = Path(text)
    if not path.is_dir():
        raise KeelError(
            f"{text} does not exist; pass a run dir, a transformers model folder or "
            "hf:NAME[@REVISION]"
        )
    if (path / MODEL_JSON).is_file():
        return KeelSource(path)
    if is_transformers(path):
        from keelctl.sources.hf import HFSource

        return HFSource(text, str(path), None, dtype=dtype, device_map=device_map)
    raise KeelError(
        f"{path / MODEL_JSON} is missing and so is config.json: {text} is neither a finished "
        "`keelctl train` run nor a transformers model; pass a run dir, a transformers folder "
        "or hf:NAME[@REVISION]"
    )
