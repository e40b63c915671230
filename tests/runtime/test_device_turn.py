"""`DeviceTurn`: an exclusive, re-entrant lock shared by the processes of one GPU."""

from __future__ import annotations

import subprocess
import sys

from helix.runtime.device_turn import DeviceTurn

TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


def _other_process_can_lock(path) -> bool:
    code = subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode
    assert code in (0, 3)
    return code == 0


def test_turn_excludes_other_processes_until_the_last_release(tmp_path):
    turn = DeviceTurn(tmp_path / "gpu.lock")
    turn.acquire()
    turn.acquire()  # re-entrant: a second hold in this process
    assert not _other_process_can_lock(turn.path)
    turn.release()
    assert not _other_process_can_lock(turn.path)
    turn.release()
    assert _other_process_can_lock(turn.path)
    turn.release()  # more releases than holds: no-op
    turn.close()


def test_no_turn_off_cuda():
    assert DeviceTurn.for_device("cpu") is None
