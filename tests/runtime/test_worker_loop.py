"""`helix.runtime.worker_loop`: the garbage collector's settings in a worker process."""

from __future__ import annotations

import gc

from helix.runtime.worker_loop import GC_YOUNG_THRESHOLD, settle_garbage_collector


def test_settling_freezes_what_exists_and_collects_young_objects_less_often():
    threshold = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == threshold[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
