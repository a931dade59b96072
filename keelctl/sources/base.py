"""What every model source offers the analyses (keelctl.sources)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn


class SourceModel(Protocol):
    """A loaded model: logits with sub-layers removed, and its layers in depth order."""

    def __call__(self, idx: torch.Tensor, skip: Iterable[int] | None = None) -> torch.Tensor: ...
    def parameters(self) -> Iterable[nn.Parameter]: ...

    @property
    def layers(self) -> list[nn.Module]:
        """The layers gradient flow is measured on: sub-layers (keelctl) or blocks (HF)."""
        ...


class ModelSource(Protocol):
    """A run or a transformers model, opened without its weights."""

    spec: str  # what the user passed
    kind: str  # "keelctl" | "transformers"
    family: str  # a run's residual scheme, or a transformers model_type
    n_sublayers: int  # 2 per block (attention, MLP)
    layer_unit: str  # the unit of SourceModel.layers: "sublayer" | "block"
    context: int  # tokens per scored window
    tokenizer: object  # keelctl.data.Tokenizer: encode, eot_id (document prefix), to_dict

    def data_config(self):
        """The run's DataConfig (its validation split), or None (transformers models)."""
        ...

    def check_unit(self, unit: str) -> None:
        """A KeelError when layers cannot be removed in `unit` (sublayer or block)."""
        ...

    def load(self, device: torch.device) -> SourceModel: ...

    def info(self) -> dict:
        """What identifies the model in reports (path, config hash or revision)."""
        ...
