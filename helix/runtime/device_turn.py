"""Turns on a shared GPU: worker processes on one device step one at a time.

Two processes' CUDA contexts on one GPU are time-sliced: when both have work queued (as with a pipeline
whose stages share the GPU and each step in turn), the GPU switches between them whenever one's queue
runs dry between launches, and each step runs far slower than alone (measured on an H200: 2.5× less
work per second for two chained workers than for one). `DeviceTurn` is an exclusive `flock` on a file
named by the GPU's UUID, taken around a step's device work (launch to read-back) and released before
the host work of sending its outputs, so co-located workers take turns and their kernels never
interleave. The kernel drops the lock with a process that dies holding it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import torch


class DeviceTurn:
    """Re-entrant within a process: the lock is taken on the first `acquire` and dropped on the last
    `release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0

    @classmethod
    def for_device(cls, device: torch.device | str) -> DeviceTurn | None:
        """The turn of a CUDA device (None on other devices)."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return cls(Path(tempfile.gettempdir()) / f"helix-gpu-{uuid}.lock")

    def acquire(self) -> None:
        if self._depth == 0:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also drops the lock
            self._fd, self._depth = None, 0
