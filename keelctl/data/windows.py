"""Map-style datasets of (x, y) token windows over a flat token array; y is x shifted by one.

Training windows start at random offsets, but "random" is a pure function of (seed, index):
sample i is the same on every rank, in every worker and after a resume, so the sampler alone
decides who sees what. Validation windows are fixed: consecutive, from the start.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch
from torch.utils.data import Dataset

from keelctl.errors import KeelError


class _MemmapByName:
    """Pickles a memmap'd `self.tokens` as its file name, not its contents: DataLoader workers
    started with spawn (macOS, Windows) would otherwise each get a copy of the whole array."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        tokens = state["tokens"]
        if isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap):  # not a slice
            state["tokens"] = (tokens.filename, tokens.dtype.str, tokens.offset, tokens.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["tokens"], tuple):
            filename, dtype, offset, shape = state["tokens"]
            state["tokens"] = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape
            )
        self.__dict__.update(state)


class TrainWindows(_MemmapByName, Dataset):
    """`length` windows of seq_len + 1 tokens at offsets drawn from PCG64([seed, i])."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, length: int):
        if seq_len < 1 or length < 1:
            raise ValueError(f"seq_len and length must be >= 1, got {seq_len}, {length}")
        if seed < 0:  # numpy's SeedSequence takes non-negative integers only
            raise KeelError(f"seed must be >= 0, got {seed}; pick a non-negative seed")
        if len(tokens) < seq_len + 1:
            raise KeelError(
                f"the training split has {len(tokens)} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}; lower seq_len or use a bigger corpus"
            )
        self.tokens, self.seq_len, self.seed, self.length = tokens, seq_len, seed, length

    def __len__(self) -> int:
        return self.length

    def start(self, i: int) -> int:
        """Offset of window i; uniform over every full window of the array."""
        rng = np.random.Generator(np.random.PCG64([self.seed, i]))
        return int(rng.integers(0, len(self.tokens) - self.seq_len))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"window {i} out of range for {self.length} windows")
        return _pair(self.tokens, self.start(i), self.seq_len)


class ValWindows(_MemmapByName, Dataset):
    """Non-overlapping consecutive windows from the start of the validation tokens.

    They cover the first n_predicted = seq_len * (min(max_tokens, len - 1) // seq_len)
    predicted tokens; a remainder shorter than one window is left out so shapes stay fixed."""

    def __init__(self, tokens: np.ndarray, seq_len: int, max_tokens: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(tokens) < seq_len + 1:
            raise KeelError(
                f"the validation split has {len(tokens)} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}; lower seq_len or raise val_fraction"
            )
        if max_tokens < seq_len:
            raise KeelError(
                f"val_tokens {max_tokens} is smaller than one window of seq_len {seq_len}; "
                "raise val_tokens or lower seq_len"
            )
        self.tokens, self.seq_len = tokens, seq_len
        self.n_windows = min(max_tokens, len(tokens) - 1) // seq_len
        self.n_predicted = self.n_windows * seq_len

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i} out of range for {self.n_windows} windows")
        return _pair(self.tokens, i * self.seq_len, self.seq_len)


def _pair(tokens: np.ndarray, start: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(np.array(tokens[start : start + seq_len + 1], dtype=np.int64))
    return chunk[:-1], chunk[1:]
