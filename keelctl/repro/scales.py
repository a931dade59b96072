"""The scales of `keelctl repro` (--scale NAME), read from scale_recipes/NAME.yaml beside this
module, shipped as package data (documented in docs/repro.md and in each file's comments): a
base recipe shared by every run plus the protocol-level settings (depths, steps, LRs, seeds,
the budget constant, ...).

micro  a few steps of 2- and 4-sub-layer models: the tests' scale; its numbers mean nothing.
cpu    d_model 64 on the Python standard-library sources: the committed reports' scale.
gpu    the paper's shapes, 64..1024 sub-layers; plans only are tested.

Depths are in sub-layers (the paper's "layers"); a recipe gets n_blocks = depth / 2.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from keelctl.config import format_validation_error, recipe_from_dict
from keelctl.errors import KeelError
from keelctl.repro.divergence import DivergenceRules

# The scale files live in the repository's recipes/, beside the recipes they are written like.
SCALES_DIR = Path(__file__).resolve().parent / "scale_recipes"  # package data: wheels carry it

_Depths = tuple[PositiveInt, ...]


class Scale(BaseModel):
    """One scale; every field is a key of its file (each explained there, cpu.yaml at length).
    Field order is the order the report's Setup section lists them in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # the base recipe shared by every run (sections model, data, optim, trainer)
    recipe: dict[str, dict]
    depths: _Depths
    steps: PositiveInt
    lr_sweep_depth: PositiveInt
    max_lr_depths: _Depths
    max_lr_steps: PositiveInt
    max_lr_peak: float = Field(gt=0)
    lr: float = Field(gt=0)
    lrs: tuple[float, ...]
    ablation_tokens: PositiveInt
    eval_batch_size: PositiveInt
    tasks: tuple[str, ...]
    task_limit: PositiveInt | None
    seed: int = Field(ge=0)
    max_lr_schemes: tuple[str, ...]
    grad_schemes: tuple[str, ...]
    fix_schemes: tuple[str, ...]
    step_s_per_sublayer: float | None = Field(gt=0)
    heldout_tokens: PositiveInt | None
    map_depths: _Depths
    map_steps: tuple[PositiveInt, ...]
    map_max_cost: PositiveInt | None
    map_equal_lr_max_cost: PositiveInt | None
    map_trains_depths: _Depths
    map_trains_steps: tuple[PositiveInt, ...]
    unigram_nll: float | None = Field(gt=0)
    design_depths: _Depths

    @property
    def divergence(self) -> DivergenceRules:
        """The detector's rules, scaled to this scale's LR ramp (divergence.py)."""
        return DivergenceRules.for_ramp(self.max_lr_steps)


def scale_names() -> list[str]:
    return sorted(p.stem for p in SCALES_DIR.glob("*.yaml"))


@cache
def get_scale(name: str) -> Scale:
    """The scale in scale_recipes/NAME.yaml, validated (its recipe too); bad input: KeelError."""
    if name not in scale_names():  # names only, so --scale cannot reach outside the folder
        raise KeelError(f"unknown --scale {name!r}; use one of {', '.join(scale_names())}")
    path = SCALES_DIR / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise KeelError(f"repro scale {path} is not valid YAML; fix the syntax") from e
    if not isinstance(data, dict) or "name" in data:
        raise KeelError(f"repro scale {path} must be a mapping without 'name' (the file names it)")
    try:
        scale = Scale(name=name, **data)
    except ValidationError as e:
        raise KeelError(format_validation_error(e, Scale, f"repro scale {path}")) from e
    recipe_from_dict(copy.deepcopy(scale.recipe), f"repro scale {path}, recipe")
    return scale
