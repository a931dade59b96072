"""Runs keelctl.train.train under FSDP on CPU processes (gloo), for tests only.

    python tests/scale/fsdp_on_cpu.py RUN_DIR RECIPE KEY=VALUE ...

The recipe asks for trainer.strategy fsdp on trainer.accelerator gpu, as a real one must
(keelctl refuses fsdp on cpu, as Lightning does; docs/scale.md), and this script runs it on CPU.
Four CPU-only obstacles are lifted, none of which touches what the tests check (sharding per
block, activation checkpointing, clipping over shards, grad norms over shards, gathering the
weights for export, full checkpoints):
1. The Trainer gets accelerator="cpu" instead of the recipe's "gpu".
2. Lightning's accelerator check rejects `type(strategy) is FSDPStrategy` without a GPU: a
   subclass passes it.
3. torch's FSDP looks for an accelerator unless device_id is given: CPU is passed.
4. Lightning's full state-dict context offloads to CPU, which on CPU tensors frees the
   gathered storage before FSDP clones it (a segfault): no offload here.
Lightning's launcher starts the other ranks by running this same script again.
"""

import functools
import sys

import lightning as L
import lightning.pytorch.strategies.fsdp as lightning_fsdp
import torch
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

import keelctl.train.fit as run
from keelctl.config import load_recipe


class CPUFSDPStrategy(lightning_fsdp.FSDPStrategy):
    pass


def _on_cpu(init):
    @functools.wraps(init)
    def wrapped(self, *args, device_id=None, **kwargs):
        cpu = torch.device("cpu")
        init(self, *args, device_id=cpu if device_id is None else device_id, **kwargs)

    return wrapped


def _full_state_dict_without_offload(module, world_size, rank0_only=True):
    return FSDP.state_dict_type(
        module,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


def _cpu_strategy(make_strategy):
    def make(t):
        strategy = make_strategy(t)
        strategy.__class__ = CPUFSDPStrategy
        return strategy

    return make


def _cpu_trainer(init):
    @functools.wraps(init)
    def wrapped(self, *args, accelerator=None, **kwargs):
        init(self, *args, accelerator="cpu", **kwargs)

    return wrapped


if __name__ == "__main__":
    L.Trainer.__init__ = _cpu_trainer(L.Trainer.__init__)
    run.make_strategy = _cpu_strategy(run.make_strategy)
    FSDP.__init__ = _on_cpu(FSDP.__init__)
    lightning_fsdp._get_full_state_dict_context = _full_state_dict_without_offload
    run_dir, recipe_path, *sets = sys.argv[1:]
    recipe = load_recipe(recipe_path, [*sets, "trainer.accelerator=gpu", "trainer.strategy=fsdp"])
    run.train(recipe, run_dir, progress_bar=False)
