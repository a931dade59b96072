"""The LightningDataModule: random training windows in a resumable order, a fixed validation set.

Training sample i is a pure function of (seed, i) (keelctl.data.TrainWindows), and the run
reads samples 0, 1, 2, ... in order (with W processes, rank r reads r, r + W, ...). So the
data position of a run is just the number of samples consumed, global_step x sequences per
step, and a resumed run starts its loader there; no loader state needs saving.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from keelctl.config import DataConfig
from keelctl.data import PreparedData, TrainWindows, ValWindows


class _FromSample(Dataset):
    """Samples start, start + 1, ... of `windows`."""

    def __init__(self, windows: Dataset, start: int):
        self.windows, self.start = windows, start

    def __len__(self) -> int:
        return len(self.windows) - self.start

    def __getitem__(self, i: int):
        return self.windows[self.start + i]


class TokenDataModule(L.LightningDataModule):
    """`prepare()` returns the token store, preparing it (keelctl prepare) when it is missing.

    Global rank zero passes the `data` it prepared before training, so a corpus mistake stops
    the run before anything is written. The other processes of a multi-process launch pass
    None: Lightning runs prepare_data() on one process per node first and makes the rest wait,
    and the store's file lock (keelctl.data.build) makes any other process that gets there
    wait for the one building, so a torchrun or SLURM launch on a cold cache tokenizes once
    per node, never once per process; setup() then opens the finished store (a manifest and
    memmaps, no text) on every process."""

    def __init__(
        self,
        prepare: Callable[[], PreparedData],
        cfg: DataConfig,
        *,
        seed: int,
        max_steps: int,
        data: PreparedData | None = None,
    ):
        super().__init__()
        self.prepare, self.cfg, self.seed, self.max_steps = prepare, cfg, seed, max_steps
        self.data = None
        if data is not None:
            self._use(data)  # here, not in setup(): a too-small split fails before training

    def _use(self, data: PreparedData) -> None:
        self.data = data
        self.val_windows = ValWindows(data.val, self.cfg.seq_len, self.cfg.val_tokens)

    def prepare_data(self) -> None:
        if self.data is None:
            self.prepare()  # fills this node's token cache

    def setup(self, stage: str) -> None:
        if self.data is None:
            self._use(self.prepare())

    def sequences_per_step(self) -> int:
        t = self.trainer
        return self.cfg.batch_size * t.accumulate_grad_batches * t.world_size

    def train_dataloader(self) -> DataLoader:
        per_step = self.sequences_per_step()
        start = self.trainer.global_step * per_step  # restored from the checkpoint on resume
        # The loader always spans the whole run's worth of samples (start..start + total), so
        # Lightning's batch counters, restored from the checkpoint, stay consistent with it.
        total = self.max_steps * per_step
        windows = TrainWindows(self.data.train, self.cfg.seq_len, self.seed, length=start + total)
        return self._loader(_FromSample(windows, start))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_windows)

    def _loader(self, dataset: Dataset) -> DataLoader:
        """In order; with several processes, rank r of W reads samples r, r + W, r + 2W, ...
        (the Trainer runs with use_distributed_sampler=False: Lightning's own sampler would
        shuffle the training samples, breaking the order a resume and a one-process run rely on).
        Validation windows are dealt out the same way; when their count is not a multiple of W,
        DistributedSampler repeats a few, which moves val_loss slightly (docs/scale.md)."""
        trainer = self.trainer
        sampler = None
        if trainer.world_size > 1:
            kwargs = trainer.strategy.distributed_sampler_kwargs  # num_replicas, rank
            sampler = DistributedSampler(dataset, shuffle=False, **kwargs)
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=trainer.strategy.root_device.type == "cuda",
        )
