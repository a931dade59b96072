"""The context a run is scored and sampled at: the one it was trained on."""

from __future__ import annotations

import os
from pathlib import Path

from keelctl.errors import KeelError
from keelctl.runs import CONFIG_YAML, read_model_meta


def trained_context(run_dir: str | os.PathLike) -> int:
    """data.seq_len from RUN/config.yaml: positions beyond it were never trained, whatever
    model.max_seq_len allows. A run without config.yaml falls back to model.max_seq_len."""
    from keelctl.config import load_recipe

    cfg, _ = read_model_meta(run_dir)
    recipe_path = Path(run_dir) / CONFIG_YAML
    if not recipe_path.is_file():
        return cfg.max_seq_len
    seq_len = load_recipe(recipe_path).data.seq_len
    if seq_len > cfg.max_seq_len:
        raise KeelError(
            f"{recipe_path}: data.seq_len {seq_len} exceeds the model's max_seq_len "
            f"{cfg.max_seq_len}; restore the run's config.yaml"
        )
    return seq_len
