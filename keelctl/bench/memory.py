"""Peak memory of one benchmark configuration, from before its model is built to its last step.

CUDA: torch.cuda.max_memory_allocated() above memory_allocated() at the start, after
reset_peak_memory_stats() (tensors only, not the caching allocator's reserve).

CPU: the process's peak resident set size (VmHWM) above its RSS at the start. PyTorch's CPU
tensors come from malloc, which tracemalloc does not see, so RSS is the honest measure. To
measure several configurations in one process, the kernel's high-water mark is reset first
(writing 5 to /proc/self/clear_refs) and glibc's free heap is handed back (malloc_trim), so a
configuration is not credited with memory an earlier one freed but the allocator kept.
Where either is unavailable (not Linux/glibc), the result is None rather than a wrong number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


def _reset_rss_peak() -> int:
    """Trim the heap, reset VmHWM, return the current RSS in bytes (raises OSError if unable)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        raise OSError("no libc")
    ctypes.CDLL(libc_name).malloc_trim(0)
    _CLEAR_REFS.write_text("5")
    return _status_kib("VmRSS") * 1024


class PeakMemory:
    """with PeakMemory(device) as peak: ...  then peak.bytes (int, or None if unmeasurable)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None
        self._start: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                self._start = _reset_rss_peak()
            except (OSError, AttributeError):
                self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self.bytes = _status_kib("VmHWM") * 1024 - self._start
