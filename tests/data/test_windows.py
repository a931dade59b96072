"""TrainWindows (deterministic random windows) and ValWindows (fixed consecutive windows)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from keelctl.data import TrainWindows, ValWindows, prepare_tokens
from keelctl.errors import KeelError

TOKENS = np.arange(1000, dtype=np.uint16)  # value == position: windows are easy to read


def test_train_window_is_a_pure_function_of_seed_and_index():
    a = TrainWindows(TOKENS, 16, seed=7, length=100)
    b = TrainWindows(TOKENS, 16, seed=7, length=100)
    for i in (0, 1, 57, 99):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Order of access does not matter (resume, other ranks, other workers).
    assert torch.equal(a[57][0], TrainWindows(TOKENS, 16, 7, 100)[57][0])
    other = TrainWindows(TOKENS, 16, seed=8, length=100)
    assert sum(a.start(i) != other.start(i) for i in range(100)) > 90
    assert len({a.start(i) for i in range(100)}) > 80


def test_train_window_shapes_and_shift():
    ds = TrainWindows(TOKENS, 16, seed=0, length=500)
    for i in range(500):
        x, y = ds[i]
        assert x.shape == y.shape == (16,) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:-1], x[1:]) and y[-1] == x[-1] + 1
        assert x[0] == ds.start(i) and 0 <= ds.start(i) <= len(TOKENS) - 17
    with pytest.raises(IndexError):
        ds[500]


def test_train_windows_reach_both_ends():
    short = np.arange(20, dtype=np.uint16)
    ds = TrainWindows(short, 16, seed=1, length=200)
    assert {ds.start(i) for i in range(200)} == {0, 1, 2, 3}


def test_val_windows_cover_consecutive_tokens():
    ds = ValWindows(TOKENS, 16, max_tokens=100)
    assert len(ds) == 6 and ds.n_predicted == 96
    xs = torch.cat([ds[i][0] for i in range(len(ds))])
    ys = torch.cat([ds[i][1] for i in range(len(ds))])
    assert torch.equal(xs, torch.arange(96)) and torch.equal(ys, torch.arange(1, 97))
    whole = ValWindows(TOKENS, 16, max_tokens=10**9)  # capped by the array: 999 predictions
    assert len(whole) == 999 // 16 and whole[len(whole) - 1][1][-1] == 16 * (999 // 16)


def test_window_errors():
    with pytest.raises(KeelError, match="training split has 10 tokens.*lower seq_len"):
        TrainWindows(TOKENS[:10], 16, seed=0, length=5)
    with pytest.raises(KeelError, match="seed must be >= 0"):
        TrainWindows(TOKENS, 16, seed=-1, length=5)
    with pytest.raises(KeelError, match="validation split has 16 tokens.*raise val_fraction"):
        ValWindows(TOKENS[:16], 16, max_tokens=1000)
    with pytest.raises(KeelError, match="val_tokens 8 is smaller than one window"):
        ValWindows(TOKENS, 16, max_tokens=8)


def test_memmapped_windows_pickle_by_file_name_and_batch(tiny_corpus, tmp_path):
    p = prepare_tokens(str(tiny_corpus), val_fraction=0.1, cache_dir=tmp_path)
    train = TrainWindows(p.train, 32, seed=3, length=64)
    blob = pickle.dumps(train)
    assert len(blob) < 2000 < p.train.nbytes
    clone = pickle.loads(blob)
    assert all(torch.equal(clone[i][0], train[i][0]) for i in range(64))
    val = pickle.loads(pickle.dumps(ValWindows(p.val, 32, max_tokens=256)))
    x, y = next(iter(DataLoader(val, batch_size=4)))
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[0], torch.from_numpy(p.val[:32].astype(np.int64)))
