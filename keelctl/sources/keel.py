"""A keelctl run dir as a model source."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from keelctl.errors import KeelError
from keelctl.runs import CONFIG_YAML, load_model, read_model_json, read_model_meta


def trained_context(run_dir: str | Path) -> int:
    """The context a run is scored and sampled at: data.seq_len from RUN/config.yaml, since
    positions beyond it were never trained, whatever model.max_seq_len allows. A run without
    config.yaml falls back to model.max_seq_len."""
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


class KeelSource:
    kind = "keelctl"
    layer_unit = "sublayer"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.spec = str(run_dir)
        self.config, self.tokenizer = read_model_meta(self.run_dir)
        self.family = self.config.residual
        self.n_sublayers = self.config.n_sublayers
        self.context = trained_context(self.run_dir)

    def data_config(self):
        from keelctl.config import load_recipe

        recipe = self.run_dir / CONFIG_YAML
        return load_recipe(recipe).data if recipe.is_file() else None

    def check_unit(self, unit: str) -> None:
        """Every keelctl sub-layer can be removed: nothing to refuse."""

    def load(self, device: torch.device) -> KeelModel:
        return KeelModel(load_model(self.run_dir, device)[0])

    def info(self) -> dict:
        return {
            "model_path": str(self.run_dir.resolve()),
            "config_hash": read_model_json(self.run_dir).get("config_hash"),
        }


class KeelModel(torch.nn.Module):
    """keelctl.model.Transformer as a SourceModel: its layers are its sub-layers."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def layers(self) -> list[torch.nn.Module]:
        return self.model.sublayers

    def forward(self, idx: torch.Tensor, skip: Iterable[int] | None = None) -> torch.Tensor:
        return self.model(idx, skip=skip)
