"""The shared-memory counters: one slot per worker process, ticked once per record.

The parent creates the block (``run_bench``); each consuming process attaches a ``Tally`` to
its slot and the ``Monitor`` reads them all. The layout is a header, then one slot per worker
process.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from multiprocessing import shared_memory

# Shared-memory layout: a header, then one slot per worker process. In the header: the phase
# (latency records flowing) and, under --transform, the outputs a reader sees (``outputs``).
_PHASE, _OUTPUTS, _HEADER = 0, 1, 8
_COUNT, _PID, _LAT_N, _FIRST, _CPU0, _LAT0 = 0, 1, 2, 3, 4, 8
_LAT_CAP = 4096
_SLOT = _LAT0 + _LAT_CAP


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open the parent's block without adopting it.

    Before Python 3.13 the resource tracker of an attaching process unlinks the block when
    that process exits (cpython #82300), under the parent's feet.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name)
    finally:
        resource_tracker.register = register


def _view(shm: shared_memory.SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None
    return buf.cast("q")


class Tally:
    """This process's slot in the shared counters; ``tick`` runs once per record."""

    def __init__(self, shm_name: str, slot: int | None, first_free: int = 0) -> None:
        self._shm = _attach(shm_name)
        self.view = _view(self._shm)
        if slot is None:  # a pool process: claim a free slot past the workers'
            slot = self._claim(shm_name, first_free)
        self.base = _HEADER + slot * _SLOT
        self.view[self.base + _PID] = os.getpid()
        atexit.register(self.close)  # the view must go before the mapping can close

    def _claim(self, shm_name: str, first: int) -> int:
        import fcntl
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f"{shm_name.strip('/')}.lock")
        with open(path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            slots = (len(self.view) - _HEADER) // _SLOT
            for slot in range(first, slots):
                if self.view[_HEADER + slot * _SLOT + _PID] == 0:
                    self.view[_HEADER + slot * _SLOT + _PID] = os.getpid()
                    return slot
        raise RuntimeError("no free counter slot for this pool process")

    def tick_fn(self) -> Callable[[int], None]:
        """A closure: a local increment and one shared store per record; latency in phase 2."""
        view, base = self.view, self.base
        at_count, at_n, at_lat = base + _COUNT, base + _LAT_N, base + _LAT0
        at_first = base + _FIRST
        count = 0

        def tick(timestamp_ms: int) -> None:
            nonlocal count
            count += 1
            if count == 1:  # before the count, so the monitor never sees one without it
                view[at_first] = time.monotonic_ns()
                view[at_first + 1] = time.process_time_ns()
            view[at_count] = count
            if view[_PHASE]:
                n = view[at_n]
                if n < _LAT_CAP:
                    view[at_lat + n] = time.time_ns() // 1_000_000 - timestamp_ms
                    view[at_n] = n + 1

        return tick

    def close(self) -> None:
        self.view.release()
        self._shm.close()
        atexit.unregister(self.close)
