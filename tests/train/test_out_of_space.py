"""A checkpoint or model write the file system refuses part way is one line (the path, the
bytes needed, the bytes free) and exit code 2; the last complete checkpoint stays intact, no
partial file is left, and --resume auto continues from it. The failure is real, injected with
RLIMIT_FSIZE in a child process (writes past the limit fail with EFBIG, as a full disk's do with
ENOSPC), and the write path's own handling is checked with ENOSPC from a file object."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.atomic import WriteFailed, atomic_path
from keelctl.cli import app
from keelctl.train.resume import checkpoint_step

KEELCTL = str(Path(sys.executable).with_name("keelctl"))
LIMIT = 200_000  # bytes: metrics.csv fits, the tiny model's checkpoint (about 0.5 MB) does not


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def test_a_refused_checkpoint_write_is_one_line_and_resume_auto_continues(tmp_path, tiny_args):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", *tiny_args(max_steps=20), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    args = [KEELCTL, "train", *tiny_args(max_steps=40), "--run-dir", str(run), "--resume"]
    child = subprocess.run(
        args, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300
    )
    assert child.returncode == 2, child.stderr[-2000:]
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in child.stderr, child.stderr[-2000:]
    assert "cannot write" in lines[0] and str(run / "checkpoints") in lines[0]
    assert "needs about" in lines[0] and "bytes free" in lines[0]

    assert last.read_bytes() == before and checkpoint_step(last) == 20  # intact
    assert not list((run / "checkpoints").glob(".*"))  # no partial file

    result = CliRunner().invoke(
        app, ["train", *tiny_args(max_steps=40), "--run-dir", str(run), "--resume", "auto"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 40
    assert summary["resumed_from_step"] == 20


class FullDisk:
    """A file object whose writes fail with ENOSPC after `room` bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_enospc_leaves_the_old_file_and_says_what_is_needed(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    state = {"w": torch.zeros(10_000)}
    with pytest.raises(WriteFailed) as caught:
        with atomic_path(target, needed=40_000) as tmp, open(tmp, "wb") as f:
            torch.save(state, FullDisk(f, room=1000))
    message = str(caught.value)
    assert "No space left on device" in message and str(target) in message
    assert "about 40,000 bytes" in message and "bytes free" in message
    assert "\n" not in message
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
