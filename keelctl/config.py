"""The recipe schema: a YAML file with sections model, data, optim, trainer (docs/train.md).

load_recipe(path, overrides) reads the YAML, applies `--set key.path=value` overrides, and
validates; every problem becomes a one-line KeelError naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keelctl.errors import KeelError
from keelctl.model import ModelConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    corpus: str = Field("builtin:python-stdlib", description="builtin:NAME, a path/glob, or hf:NAME[:CONFIG]")
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: int | None = Field(None, ge=257, description="BPE vocabulary (bpe only)")
    text_field: str = "text"
    split: str = "train"
    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(16, ge=1, description="micro-batch per device, in sequences")
    val_fraction: float = Field(0.01, gt=0, lt=1, description="share of documents held out")
    val_tokens: int = Field(65536, ge=2, description="size of the fixed validation set")
    max_bytes: int | None = Field(None, ge=1, description="cap on corpus size (bytes of text)")
    cache_dir: str | None = Field(None, description="token cache; None = $KEELCTL_CACHE or ~/.cache/keelctl")
    num_workers: int = Field(0, ge=0)


class OptimConfig(_Section):
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(1e-7, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)


class TrainerConfig(_Section):
    max_steps: int = Field(1000, ge=1)
    precision: Literal["32", "bf16-mixed"] = "32"
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    val_every: int = Field(100, ge=1, description="validate every N optimizer steps")
    log_every: int = Field(10, ge=1)
    grad_flow_every: int = Field(50, ge=0, description="record per-sub-layer grad norms; 0 = off")
    compile: bool = False
    activation_checkpointing: bool = False

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class RecipeConfig(_Section):
    name: str = "run"
    description: str = ""
    seed: int = 1337
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _check_cross_section(self) -> RecipeConfig:
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len {self.data.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}"
            )
        if self.data.tokenizer == "bpe" and self.data.vocab_size is None:
            raise ValueError("data.vocab_size is required with data.tokenizer: bpe")
        needed = self.data.vocab_size if self.data.tokenizer == "bpe" else 257
        if self.model.vocab_size < needed:
            raise ValueError(f"model.vocab_size {self.model.vocab_size} < tokenizer vocab {needed}")
        return self


def _allowed_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at the parent of `loc` (for 'unknown key' messages)."""
    cls = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return []
        cls = field.annotation
    return list(cls.model_fields) if issubclass(cls, BaseModel) else []


def format_validation_error(err: ValidationError, cls: type[BaseModel] = None, source: str = "") -> str:
    """First pydantic error as one line: where, what, what is allowed."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    prefix = f"{source}: " if source else ""
    if e["type"] == "extra_forbidden" and cls is not None:
        allowed = ", ".join(_allowed_keys(cls, e["loc"]))
        return f"{prefix}unknown key '{key}'; allowed here: {allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["loc"]:
        return f"{prefix}bad value for '{key}': {msg} (got {e.get('input')!r})"
    return f"{prefix}{msg}"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise KeelError(f"--set expects key.path=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise KeelError(f"--set {item}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def recipe_from_dict(data: dict, source: str = "recipe") -> RecipeConfig:
    try:
        return RecipeConfig(**data)
    except ValidationError as e:
        raise KeelError(format_validation_error(e, RecipeConfig, source)) from e


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    path = Path(path)
    if not path.is_file():
        raise KeelError(f"recipe {path} not found; see recipes/ for the shipped ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise KeelError(f"recipe {path} is not valid YAML{line}; fix the syntax") from e
    if not isinstance(data, dict):
        raise KeelError(f"recipe {path} must be a mapping with sections model, data, optim, trainer")
    return recipe_from_dict(apply_overrides(data, overrides or []), str(path))


def dump_recipe(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
