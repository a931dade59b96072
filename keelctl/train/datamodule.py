"""The LightningDataModule: random training windows in a resumable order, a fixed validation set.

Training sample i is a pure function of (seed, i) (keelctl.data.TrainWindows), and the run
reads samples 0, 1, 2, ... in order (the distributed sampler deals them out to ranks). So the
data position of a run is just the number of samples consumed, global_step x sequences per
step, and a resumed run starts its loader there; no loader state needs saving.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

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
    def __init__(self, data: PreparedData, cfg: DataConfig, *, seed: int, max_steps: int):
        super().__init__()
        self.data, self.cfg, self.seed, self.max_steps = data, cfg, seed, max_steps
        # Built here, not in setup(), so a too-small split fails before training starts.
        self.val_windows = ValWindows(data.val, cfg.seq_len, cfg.val_tokens)

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
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.trainer.strategy.root_device.type == "cuda",
        )
