"""Keep HiGHS's console output (its banner, printed from C code on the first model of a process) off
the terminal: while planning, file descriptor 1 points at a log file (or the null device)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def solver_output_to(path: str | Path | None) -> Iterator[None]:
    """Send fd 1 to `path` (appended; the null device when None) for the duration of the block; a log
    that stays empty (the run failed before any solver started) is removed."""
    existed = path is not None and Path(path).exists()
    sys.stdout.flush()
    target = os.open(str(path) if path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1)
    try:
        os.dup2(target, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)
        if path is not None and not existed and Path(path).stat().st_size == 0:
            Path(path).unlink()
