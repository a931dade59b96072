"""Running on many devices: the Lightning strategy, FSDP2 sharding with its precision policy,
and the full weights of a sharded model for export. How to launch: docs/scale.md; how
checkpoints are written and read under each strategy: checkpoint_io.py.

    ddp   one replica per device; gradients all-reduced (averaged) after each backward.
    fsdp  FSDP2 (torch.distributed.fsdp.fully_shard) through Lightning's ModelParallelStrategy:
          one unit per Block plus the root (parameters, gradients and AdamW state sharded over
          all devices); under bf16-mixed, MixedPrecisionPolicy(param_dtype=bf16,
          reduce_dtype=fp32) with the residual stream kept fp32 (keelctl.model.transformer)
          and each Block's norms an fp32 unit of their own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from keelctl.config import TrainerConfig
from keelctl.errors import KeelError
from keelctl.model import Transformer, build_model
from keelctl.train.checkpoint_io import relink, shards_folder


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
    if precision == "bf16-mixed":
        for norm in (model.norm_emb, model.norm_f):
            if norm is not None:
                fully_shard(norm, mesh=mesh, mp_policy=FP32_POLICY, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=policy)


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as pure data parallel FSDP2 over every device of every node
    (LanguageModel.configure_model shards), whose sharded checkpoints are written to a new
    folder and then swapped in by replacing a symbolic link: a kill at any moment leaves the
    previous checkpoint whole, as AtomicCheckpointIO does for files (checkpoint_io.py)."""

    def __init__(self):
        super().__init__(save_distributed_checkpoint=True)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])  # the same new folder on every rank
        shards = shards_folder(path, token)
        super().save_checkpoint(checkpoint, shards, storage_options)
        self.barrier()  # every rank's shard file is complete
        if self.global_rank == 0:
            relink(path, shards)
        self.barrier()


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
