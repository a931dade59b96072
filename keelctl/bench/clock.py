"""The step clock both benchmark paths use: wall time and process CPU time between consecutive
optimizer-step ends (on CUDA the wall clock first waits for the GPU). On a shared CPU with one
torch thread the CPU time is the step's own work, which other jobs disturb far less."""

from __future__ import annotations

import time

import torch


class StepClock:
    def __init__(self, device: torch.device):
        self.device = device
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._wall = self._cpu = 0.0

    def _now(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter(), time.process_time()

    def start(self) -> None:
        self._wall, self._cpu = self._now()

    def tick(self) -> None:
        """One step ended."""
        wall, cpu = self._now()
        self.wall.append(wall - self._wall)
        self.cpu.append(cpu - self._cpu)
        self._wall, self._cpu = wall, cpu
