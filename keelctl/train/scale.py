"""Running on many devices: the Lightning strategy, the precision policy of sharded training,
crash-safe checkpoint writes, and the full weights of a sharded model for export. How to
launch: docs/scale.md.

    ddp   one replica per device; gradients all-reduced (averaged) after each backward.
    fsdp  FSDP2 (torch.distributed.fsdp.fully_shard) through Lightning's ModelParallelStrategy:
          one unit per Block plus the root (parameters, gradients and AdamW state sharded over
          all devices); under bf16-mixed, MixedPrecisionPolicy(param_dtype=bf16,
          reduce_dtype=fp32) with the residual stream kept fp32 (keelctl.model.transformer)
          and each Block's norms an fp32 unit of their own;
          sharded checkpoints (torch.distributed.checkpoint), each a folder that replaces the
          previous one atomically.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from keelctl.atomic import atomic_path
from keelctl.config import TrainerConfig
from keelctl.errors import KeelError
from keelctl.model import Transformer, build_model

SHARDS_SUFFIX = ".shards"  # a sharded checkpoint's folder: .NAME.<id>.shards, NAME a link to it
METADATA_FILE = "meta.pt"  # Lightning's: everything but the weights and optimizer state


def make_strategy(t: TrainerConfig) -> str | Strategy:
    if t.strategy != "fsdp":
        return t.strategy  # "auto" or "ddp": Lightning's own
    if not torch.distributed.is_available():
        raise KeelError(
            f"trainer.strategy fsdp needs torch.distributed, which torch {torch.__version__} "
            "here was built without; use trainer.strategy=auto or a torch build with it"
        )
    return FSDP2Strategy()


def is_sharded(strategy: Strategy) -> bool:
    """Whether each rank holds only a shard of every parameter and gradient (fsdp)."""
    return isinstance(strategy, ModelParallelStrategy)


def local_grad(p: torch.nn.Parameter) -> torch.Tensor | None:
    """This rank's part of p's gradient: its shard under fsdp (a DTensor's local tensor)."""
    g = p.grad
    return g.to_local() if isinstance(g, torch.distributed.tensor.DTensor) else g


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """bf16 copies of the weights for compute under bf16-mixed (fp32 otherwise), gradients
    reduced in fp32. cast_forward_inputs=False: FSDP would otherwise cast each Block's input,
    the residual stream, to bf16 (docs/scale.md, precision)."""
    bf16 = precision == "bf16-mixed"
    return MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32,
        cast_forward_inputs=False,
    )


# The norms' own units: gains computed in fp32 under every precision.
FP32_POLICY = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard_model(model: Transformer, mesh, precision: str) -> None:
    """fully_shard each Block, then the root (embedding, final norm, head), as torchtitan does,
    with the norms of each Block first as one unit of their own in fp32: a Keel LN_out gain
    multiplies the residual stream itself, and bf16 rounding of its small learned deviations
    from 1 compounds over depth (docs/scale.md, precision). Call after activation
    checkpointing and compile (keelctl.train.compile)."""
    policy = mixed_precision_policy(precision)
    for block in model.blocks:
        if precision == "bf16-mixed":
            norms = [m for m in block.modules() if isinstance(m, torch.nn.RMSNorm)]
            # gathered once per step: kilobytes, not worth a second gather for backward
            fully_shard(norms, mesh=mesh, mp_policy=FP32_POLICY, reshard_after_forward=False)
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if precision == "bf16-mixed" and model.norm_f is not None:
        fully_shard(model.norm_f, mesh=mesh, mp_policy=FP32_POLICY, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=policy)


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as pure data parallel FSDP2 over every device of every node
    (LanguageModel.configure_model shards), whose sharded checkpoints are written to a new
    folder and then swapped in by replacing a symbolic link: a kill at any moment leaves the
    previous checkpoint whole, as AtomicCheckpointIO does for files."""

    def __init__(self):
        super().__init__(save_distributed_checkpoint=True)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])  # the same new folder on every rank
        shards = path.with_name(f".{path.name}.{token}{SHARDS_SUFFIX}")
        super().save_checkpoint(checkpoint, shards, storage_options)
        self.barrier()  # every rank's shard file is complete
        if self.global_rank == 0:
            _relink(path, shards)
        self.barrier()


def _relink(path: Path, shards: Path) -> None:
    """Point `path` at the folder `shards` (an atomic rename of a new link over it), then
    delete the folder it pointed at before."""
    old = path.resolve() if path.is_symlink() else None
    _fsync_tree(shards)
    if path.is_dir() and not path.is_symlink():  # a plain folder (not keelctl's layout)
        shutil.rmtree(path)
    link = shards.with_name(shards.name + ".link")
    link.symlink_to(shards.name)
    os.replace(link, path)
    _fsync_tree(path.parent, files=False)
    if old is not None and old != shards.resolve() and old.is_dir():
        shutil.rmtree(old)


def _fsync_tree(folder: Path, files: bool = True) -> None:
    for file in folder.iterdir() if files else ():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_shards(ckpt_dir: Path) -> None:
    """Delete shard folders no checkpoint link points at (left by a kill during a save)."""
    if not ckpt_dir.is_dir():
        return
    for link in ckpt_dir.glob(".*.link"):  # a new link not yet renamed into place
        link.unlink()
    live = {p.resolve() for p in ckpt_dir.iterdir() if p.is_symlink()}
    for folder in ckpt_dir.glob(f".*{SHARDS_SUFFIX}"):
        if folder.resolve() not in live:
            shutil.rmtree(folder, ignore_errors=True)


def read_sharded_checkpoint(path: Path) -> dict:
    """A sharded checkpoint's metadata (meta.pt: step, recipe, tokenizer, loops, callbacks)
    plus `state_dict`: the names and shapes of its weights as meta tensors (no data read).
    Checks that every shard file the index names is there."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        index = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 (DCP raises many types for a missing/bad index)
        raise KeelError(
            f"sharded checkpoint {path} has no readable index (.metadata: {type(e).__name__}); "
            "it is incomplete: delete it, or resume from an earlier checkpoint"
        ) from None
    files = {info.relative_path for info in index.storage_data.values()}
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing or not (path / METADATA_FILE).is_file():
        lacks = missing[0] if missing else METADATA_FILE
        raise KeelError(
            f"sharded checkpoint {path} lacks {lacks} (of {len(files)} shard files); it is "
            "incomplete: copy the whole folder, or resume from an earlier checkpoint"
        )
    meta = torch.load(path / METADATA_FILE, map_location="cpu", weights_only=True)
    prefix = "state_dict."
    meta["state_dict"] = {
        key.removeprefix(prefix): torch.empty(item.size, device="meta")
        for key, item in index.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata)
    }
    return meta


def check_checkpoint_layout(path: Path, saved_strategy: str, strategy: str) -> None:
    """A sharded checkpoint (a folder) resumes under fsdp only, and fsdp (FSDP2) resumes only
    sharded ones: a full-file fsdp checkpoint is from keelctl's earlier FSDP1, whose optimizer
    state is laid out differently."""
    if path.is_dir() and strategy != "fsdp":
        raise KeelError(
            f"{path} is a sharded (FSDP2) checkpoint and trainer.strategy is {strategy}; "
            "resume it with trainer.strategy=fsdp"
        )
    if strategy == "fsdp" and saved_strategy == "fsdp" and not path.is_dir():
        raise KeelError(
            f"{path} is a full-file checkpoint of keelctl's earlier FSDP1 trainer.strategy fsdp; "
            "this keelctl's fsdp (FSDP2) resumes only its sharded checkpoints: resume it with "
            "the keelctl that wrote it, or train afresh"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but a save can never leave a partial checkpoint: torch.save
    streams into a temporary file beside the target, which is fsynced and renamed over it
    (keelctl.atomic.atomic_path). Lightning's own save buffers the whole checkpoint in memory and
    moves it from the system temp dir, which is a copy, not a rename, when that is another file
    system. Loads always use weights_only=True: no code in a checkpoint is ever run."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        with atomic_path(path, needed=tensor_bytes(checkpoint)) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)  # a file object: a refused write is an OSError (errno)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def tensor_bytes(obj) -> int:
    """The bytes of every tensor in a (nested) checkpoint: about the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def gathered_model(trainer: Trainer, module: LightningModule) -> Transformer | None:
    """The trained Transformer with all of its weights, on global rank zero (None elsewhere).
    Every rank must call it: under FSDP it gathers the shards, a collective; the gathered
    copy lives on rank zero's CPU and shares nothing with the sharded model."""
    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return module.model if trainer.is_global_zero else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module.model, options=options)  # full on rank 0, else empty
    if not trainer.is_global_zero:
        return None
    with torch.device("meta"):
        model = build_model(module.model.config)
    # clone: the gathered tensors are views of larger buffers, which safetensors refuses.
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    if model.config.tie_embeddings:  # assign=True gave the head its own Parameter
        model.head.weight = model.tok_emb.weight
    return model
