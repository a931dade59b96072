"""The recipe schema: a YAML file with sections model, data, optim, trainer (docs/train.md).

load_recipe(path, overrides) reads the YAML, lays it over the recipe its `base:` names (and that
one's base, ...), applies `--set key.path=value` overrides, and validates; every problem
becomes a one-line KeelError naming the key and what is allowed.
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
    corpus: str = Field(
        "builtin:python-stdlib",
        description="builtin:NAME, a local file/dir/glob, or hf:NAME[:CONFIG] (docs/data.md)",
    )
    tokenizer: str = Field(
        "byte",
        min_length=1,
        description="byte: 256 bytes + end-of-text, no training; bpe: trained on a sample of the "
        "corpus; or a pretrained HF tokenizer: a tokenizer.json, a folder holding one, or a hub "
        "name such as gpt2 (docs/data.md)",
    )
    vocab_size: int | None = Field(None, ge=257, description="BPE vocabulary (bpe only)")
    tokenizer_train_bytes: int = Field(
        256_000_000, ge=1, description="bpe only: text the BPE is trained on (the corpus's first)"
    )
    text_field: str = Field("text", description="field holding the text (jsonl and hf: corpora)")
    split: str = Field("train", description="hf: dataset split to read")
    seq_len: int = Field(256, ge=2, description="tokens per training sequence (context length)")
    batch_size: int = Field(16, ge=1, description="micro-batch per device, in sequences")
    val_fraction: float = Field(0.01, gt=0, lt=1, description="share of documents held out")
    val_tokens: int = Field(65536, ge=2, description="size of the fixed validation set, in tokens")
    max_bytes: int | None = Field(None, ge=1, description="cap on corpus size (bytes of text)")
    cache_dir: str | None = Field(
        None, description="token stores: CACHE/stores/; None = $KEELCTL_CACHE or ~/.cache/keelctl"
    )
    store: str | None = Field(
        None, description="an explicit token store folder (keelctl prepare); None = under cache_dir"
    )
    shard_tokens: int = Field(
        100_000_000, ge=1024, description="tokens per token-store shard (does not change training)"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per device")


class OptimConfig(_Section):
    """AdamW; linear warm-up from lr/warmup_steps to lr, then cosine down to min_lr at max_steps."""

    lr: float = Field(3e-3, gt=0, description="peak learning rate (after warm-up)")
    min_lr: float = Field(1e-7, ge=0, description="learning rate at the last step")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled weight decay on matrices; none on norms/embeddings"
    )
    warmup_steps: int = Field(100, ge=0, description="optimizer steps of linear warm-up")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad L2 norm; null = off")

    @model_validator(mode="after")
    def _check_min_lr(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr {self.min_lr} exceeds optim.lr {self.lr}")
        return self


class SpikeRollbackConfig(_Section):
    """On a loss spike, go back to checkpoints/last.ckpt and continue with a lower LR."""

    enabled: bool = Field(False, description="roll back on loss spikes (and on NaN/Inf losses)")
    factor: float = Field(
        2.0, gt=1, description="a spike: loss > factor x mean of the previous `window` losses"
    )
    window: int = Field(50, ge=1, description="micro-batch losses in the running mean")
    lr_scale: float = Field(
        0.5, gt=0, lt=1, description="each rollback multiplies the learning rate by this"
    )
    max_rollbacks: int = Field(3, ge=1, description="after this many, a spike stops the run")


class TrainerConfig(_Section):
    max_steps: int = Field(1000, ge=1, description="optimizer steps (the cosine ends here)")
    precision: Literal["32", "bf16-mixed"] = Field(
        "32", description="32: fp32; bf16-mixed: bf16 autocast, fp32 weights and skip sums"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = Field(
        "auto", description="Lightning accelerator"
    )
    devices: int | Literal["auto"] = Field(
        1, description="devices per node (Lightning); on CPU, processes"
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="auto: one device; ddp: data parallel; fsdp: sharded, one unit per block",
    )
    num_nodes: int = Field(1, ge=1, description="machines (Lightning)")
    accumulate_grad_batches: int = Field(1, ge=1, description="micro-batches per optimizer step")
    val_every: int = Field(
        100, ge=1, description="validate (and write last.ckpt / best.ckpt) every N optimizer steps"
    )
    checkpoint_every_minutes: float | None = Field(
        30.0,
        gt=0,
        description="also write last.ckpt once this many minutes of training passed since the "
        "last write (a crash loses at most that); null = only after validations",
    )
    keep_checkpoints: int = Field(
        0, ge=0, description="keep the last K step checkpoints (step-N.ckpt) beside last/best"
    )
    log_every: int = Field(10, ge=1, description="write train metrics every N optimizer steps")
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = Field(
        ["csv", "tensorboard"],
        description="experiment trackers; metrics.csv (csv) is always written (docs/train.md)",
    )
    grad_flow_every: int = Field(50, ge=0, description="record per-sub-layer grad norms; 0 = off")
    compile: bool = Field(False, description="torch.compile each block (compile time ~ depth-free)")
    activation_checkpointing: bool = Field(
        False, description="recompute each block in the backward pass (saves memory)"
    )
    spike_rollback: SpikeRollbackConfig = Field(default_factory=SpikeRollbackConfig)
    eval_every: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="run trainer.eval_tasks on the model in training every N optimizer steps "
        "(and after the last); null = never (docs/train.md)",
    )
    eval_tasks: list[str] = Field(
        [], description="lm-eval task names for eval_every, as `keelctl eval --tasks` takes them"
    )
    eval_limit: int | None = Field(
        None, ge=1, strict=True, description="examples per task at each eval; null = all"
    )

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _tasks_as_list(cls, v: Any) -> Any:
        return [name.strip() for name in v.split(",") if name.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check_eval(self) -> TrainerConfig:
        if self.eval_every is not None and not self.eval_tasks:
            raise ValueError("trainer.eval_every needs trainer.eval_tasks (e.g. keel_hops)")
        if self.eval_tasks and self.eval_every is None:
            raise ValueError("trainer.eval_tasks needs trainer.eval_every (optimizer steps)")
        return self

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers_as_list(cls, v: Any) -> Any:
        return [name.strip() for name in v.split(",")] if isinstance(v, str) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _device_count(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be a count >= 1 or 'auto'")


class RecipeConfig(_Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="names the default run dir"
    )
    description: str = Field("", description="one line for humans")
    seed: int = Field(1337, ge=0, description="model init and the order of training windows")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _check_cross_section(self) -> RecipeConfig:
        if self.data.seq_len > self.model.max_seq_len:
            seq_len, max_seq_len = self.data.seq_len, self.model.max_seq_len
            raise ValueError(f"data.seq_len {seq_len} exceeds model.max_seq_len {max_seq_len}")
        if self.data.tokenizer == "bpe" and self.data.vocab_size is None:
            raise ValueError("data.vocab_size is required with data.tokenizer: bpe")
        # A pretrained tokenizer's size is checked when it is loaded (keelctl prepare / train).
        needed = {"bpe": self.data.vocab_size, "byte": 257}.get(self.data.tokenizer, 0)
        if self.model.vocab_size < needed:
            raise ValueError(f"model.vocab_size {self.model.vocab_size} < tokenizer vocab {needed}")
        return self

    @property
    def sequences_per_step(self) -> int | None:
        """Global batch in sequences: devices x num_nodes x batch_size x accumulation."""
        if self.trainer.devices == "auto":
            return None
        t = self.trainer
        return t.devices * t.num_nodes * self.data.batch_size * t.accumulate_grad_batches


def _allowed_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at the parent of `loc` (for 'unknown key' messages)."""
    cls = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return []
        cls = field.annotation
    return list(cls.model_fields) if issubclass(cls, BaseModel) else []


def format_validation_error(
    err: ValidationError, cls: type[BaseModel] = None, source: str = ""
) -> str:
    """First pydantic error as one line: where, what, what is allowed."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    prefix = f"{source}: " if source else ""
    if e["type"] == "extra_forbidden" and cls is not None:
        allowed = ", ".join(_allowed_keys(cls, e["loc"]))
        return f"{prefix}unknown key '{key}'; allowed here: {allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    if not e["loc"]:
        return f"{prefix}{msg}"
    got = e.get("input")
    if isinstance(got, dict) and e["type"] == "value_error":  # a section check: msg has values
        return f"{prefix}bad '{key}' section: {msg}"
    return f"{prefix}bad value for '{key}': {msg} (got {got!r})"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise KeelError(f"--set expects key.path=value (e.g. optim.lr=3e-3), got {item!r}")
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


def _read_mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise KeelError(f"recipe {path} is not valid YAML{line}; fix the syntax") from e
    if not isinstance(data, dict):
        raise KeelError(
            f"recipe {path} must be a mapping with sections model, data, optim, trainer; "
            "start from one in recipes/"
        )
    return data


def _merge(base: dict, delta: dict) -> dict:
    """`base` with `delta` laid over it: sections merge key by key, values (lists too) replace."""
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_bases(path: Path) -> tuple[dict, list[Path]]:
    """The recipe at `path` merged over its `base:` chain, and the chain's files (path first).
    `base:` names the recipe file it extends, relative to its own folder."""
    chain, layers = [path], [_read_mapping(path)]
    while (base := layers[-1].pop("base", None)) is not None:
        here = chain[-1]
        if not isinstance(base, str) or not base.strip():
            raise KeelError(
                f"recipe {here}: bad value for 'base': name the recipe file it extends, relative "
                f"to {here.parent} (got {base!r})"
            )
        base_path = here.parent / base
        if not base_path.is_file():
            raise KeelError(f"recipe {here}: base {base_path} not found; fix its 'base:' path")
        if base_path.resolve() in {p.resolve() for p in chain}:
            cycle = " -> ".join(str(p) for p in [*chain, base_path])
            raise KeelError(f"recipe {path}: its bases form a cycle ({cycle}); break it")
        chain.append(base_path)
        layers.append(_read_mapping(base_path))
    merged: dict = {}
    for layer in reversed(layers):
        merged = _merge(merged, layer)
    return merged, chain


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    path = Path(path)
    if not path.is_file():
        raise KeelError(f"recipe {path} not found; see recipes/ for the shipped ones")
    if any(parse_override(item)[0] == ["base"] for item in overrides or []):
        raise KeelError("--set base=...: a recipe's base is chosen in its file; write base: there")
    data, chain = resolve_bases(path)
    source = str(path)
    if len(chain) > 1:  # a bad key may come from any file of the chain: name them all
        source += " (with base " + ", ".join(str(p) for p in chain[1:]) + ")"
    try:
        return recipe_from_dict(apply_overrides(data, overrides or []), source)
    except KeelError as e:
        raise KeelError(
            f"{e}; fix the recipe or its --set (docs/train.md lists every key)"
        ) from None


def dump_recipe(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
