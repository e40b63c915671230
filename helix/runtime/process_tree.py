"""This process's descendants, recorded so they can be stopped by PID after their parents are gone.

When Ray's control plane dies, the local Ray that `helix serve` started (raylet, its agents, workers)
cannot be stopped through Ray, and some of it outlives its parent raylet (re-parented to init, so no
longer a descendant). `ProcessTree` remembers every descendant it has seen — a PID with its start time,
so a recycled PID is never signalled — and `kill()` SIGKILLs those still running. Linux only (/proc);
elsewhere it records nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of `pid`, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """PID → start time of every living descendant of `root`."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


class ProcessTree:
    """The descendants of `root` (default: this process) seen by any `record()` call."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self.seen: dict[int, int] = {}

    def record(self) -> int:
        """Add the living descendants; returns how many are known."""
        self.seen.update(descendants(self.root))
        return len(self.seen)

    def kill(self) -> list[int]:
        """SIGKILL every recorded process that still runs (same PID and start time); their PIDs."""
        self.record()
        killed = []
        for pid, started in self.seen.items():
            stat = _stat(pid)
            if stat is None or stat[2] != started or stat[1] == "Z":
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        return killed
