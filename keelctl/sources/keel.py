"""A keelctl run dir as a model source."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from keelctl.errors import KeelError
from keelctl.runs import CONFIG_YAML, Run


def trained_context(run: str | Path | Run) -> int:
    """The context a run is scored and sampled at: data.seq_len from RUN/config.yaml, since
    positions beyond it were never trained, whatever model.max_seq_len allows. A run without
    config.yaml falls back to model.max_seq_len."""
    run = run if isinstance(run, Run) else Run(run)
    cfg, _ = run.model_meta
    data = run.data_config()
    if data is None:
        return cfg.max_seq_len
    seq_len = data.seq_len
    if seq_len > cfg.max_seq_len:
        raise KeelError(
            f"{run.path / CONFIG_YAML}: data.seq_len {seq_len} exceeds the model's max_seq_len "
            f"{cfg.max_seq_len}; restore the run's config.yaml"
        )
    return seq_len


class KeelSource:
    kind = "keelctl"
    layer_unit = "sublayer"

    def __init__(self, run_dir: str | Path):
        self.run = Run(run_dir)
        self.run_dir = self.run.path
        self.spec = str(run_dir)
        self.config, self.tokenizer = self.run.model_meta
        self.family = self.config.residual
        self.n_sublayers = self.config.n_sublayers
        self.context = trained_context(self.run)

    def data_config(self):
        return self.run.data_config()

    def check_unit(self, unit: str) -> None:
        """Every keelctl sub-layer can be removed: nothing to refuse."""

    def load(self, device: torch.device) -> KeelModel:
        return KeelModel(self.run.load_model(device)[0])

    def info(self) -> dict:
        return {
            "model_path": str(self.run_dir.resolve()),
            "config_hash": self.run.model_json.get("config_hash"),
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
