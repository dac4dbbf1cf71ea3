"""The shared-memory counters: one slot per worker process.

The parent creates the block (``run_bench``); each consuming process attaches a ``Tally`` to
its slot and the ``Monitor`` reads them all. The layout is a header, then one slot per worker
process.

How each side counts is what a user's own code would do, so the count costs neither side
more than it would cost a user: the raw loops count per batch (``begin`` before a batch's
work, ``add`` after it); streamq's handlers count per record in a local variable
(``counter``). In the monitor's own process (one worker) the monitor reads that local each
time it samples (``publish_local``), so streamq's side runs no thread the raw side lacks;
each process of ``--workers N`` or of a process pool has a thread publishing it every
millisecond. Latency is sampled per record on both sides only while the latency records
flow, at a fixed rate.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing import shared_memory
from typing import Any

# Shared-memory layout: a header, then one slot per worker process. In the header: the phase
# (latency records flowing) and, under --transform, the outputs a reader sees (``outputs``).
_PHASE, _OUTPUTS, _HEADER = 0, 1, 8
_COUNT, _PID, _LAT_N, _FIRST, _CPU0, _LAT0 = 0, 1, 2, 3, 4, 8
_LAT_CAP = 1 << 16  # samples per process: every record of a latency scenario
_SLOT = _LAT0 + _LAT_CAP

# Tallies of this process that the monitor publishes as it samples (``Tally(local=True)``).
_LOCAL: list[Tally] = []


def publish_local() -> None:
    """Copy the in-process handlers' counts into their slots (the monitor, before it reads).

    A publishing thread would wake every millisecond and take the GIL from streamq's two
    threads, a cost the raw loop (counting inline, per batch) does not pay.
    """
    for tally in _LOCAL:
        tally.publish()


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
    """This process's slot in the shared counters."""

    def __init__(
        self, shm_name: str, slot: int | None, first_free: int = 0, *, local: bool = False
    ) -> None:
        self._shm = _attach(shm_name)
        self.view = _view(self._shm)
        if slot is None:  # a pool process: claim a free slot past the workers'
            slot = self._claim(shm_name, first_free)
        self.base = _HEADER + slot * _SLOT
        self.view[self.base + _PID] = os.getpid()
        self._count = 0
        self._started = False
        self._read_at: tuple[int, int] | None = None  # the raw loops' read: see reading
        self._publisher: threading.Thread | None = None
        self._local = local  # read by a Monitor of this process: published as it samples
        self._cells: tuple[Any, Any] | None = None  # the handler's count and sampling cells
        self._closing = threading.Event()
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

    # -- the raw loops: per batch ------------------------------------------------------------

    def reading(self) -> None:
        """Before each read until the first batch: the drain starts when that read began.

        A raw loop's first read can bring the whole backlog (``XREADGROUP COUNT 500`` over
        256 streams: 128,000 records, a second of Redis's time); stamping the start only
        after it returned left that second out of the raw side's time.
        """
        self._read_at = (time.monotonic_ns(), time.process_time_ns())

    def begin(self) -> None:
        """Before a batch's work: the first one stamps the drain's start (clock, CPU)."""
        if not self._started:
            self._started = True
            self.stamp_first(self._read_at)

    def add(self, n: int, stamps: Callable[[], Iterable[int]]) -> None:
        """After a batch's work: its ``n`` records counted.

        ``stamps()`` (each record's broker timestamp, ms) is read only while the latency
        records flow.
        """
        self._count += n
        view = self.view
        view[self.base + _COUNT] = self._count
        if view[_PHASE]:
            self.sample(stamps())

    def stamp_first(self, at: tuple[int, int] | None = None) -> None:
        """The drain's start: its first record (clock, CPU), or the read that brought it."""
        mono, cpu = at or (time.monotonic_ns(), time.process_time_ns())
        at_first = self.base + _FIRST
        self.view[at_first] = mono
        self.view[at_first + 1] = cpu

    def sample(self, stamps: Iterable[int]) -> None:
        """End-to-end latencies of records with these broker timestamps (ms), handled now."""
        view, at_n, at_lat = self.view, self.base + _LAT_N, self.base + _LAT0
        now_ms = time.time_ns() // 1_000_000
        for timestamp_ms in stamps:
            n = view[at_n]
            if n >= _LAT_CAP:
                return
            view[at_lat + n] = now_ms - timestamp_ms
            view[at_n] = n + 1

    # -- streamq's handlers: per record, in a local ------------------------------------------

    def counter(self) -> Callable[[int], None]:
        """A handler's count: a local increment per record, as a user's handler would keep.

        The first record stamps the drain's start. A thread of this process publishes the
        count every millisecond (the monitor samples every 2 ms) and turns on latency
        sampling once the latency records flow: their per-record cost is the raw loop's.
        """
        stamp_first, latencies = self.stamp_first, self.sample
        count = 0
        sampling = False

        def count_record(timestamp_ms: int) -> None:
            nonlocal count
            count += 1
            if count == 1:
                stamp_first()
            if sampling:  # only while the latency records flow, at a fixed rate
                latencies((timestamp_ms,))

        self.watch(count_record)
        return count_record

    def batch_counter(self) -> Callable[[list[Any]], None]:
        """A batch handler's count: ``counter``'s, once per batch (streamq ``Message``s)."""
        stamp_first, latencies = self.stamp_first, self.sample
        count = 0
        sampling = False

        def count_batch(batch: list[Any]) -> None:
            nonlocal count
            if not count:
                stamp_first()
            count += len(batch)
            if sampling:
                latencies(msg.timestamp for msg in batch)

        self.watch(count_batch)
        return count_batch

    def watch(self, fn: Callable[..., object]) -> None:
        """The thread that publishes ``fn``'s local ``count`` (and sets its ``sampling``)."""
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True))
        self._cells = (cells["count"], cells["sampling"])
        if self._local:
            _LOCAL.append(self)
            return
        self._publisher = threading.Thread(target=self._publish_every_ms, daemon=True,
                                           name="bench-count")  # fmt: skip
        self._publisher.start()

    def publish(self) -> None:
        """The handler's count into the slot; its latency sampling on once the phase says."""
        if self._cells is None:
            return
        count, sampling = self._cells
        self.view[self.base + _COUNT] = count.cell_contents
        if not sampling.cell_contents and self.view[_PHASE]:
            sampling.cell_contents = True

    def _publish_every_ms(self) -> None:
        while not self._closing.wait(0.001):
            self.publish()
        self.publish()

    def close(self) -> None:
        self._closing.set()
        if self._publisher is not None and self._publisher is not threading.current_thread():
            self._publisher.join(1.0)
        if self in _LOCAL:
            self.publish()
            _LOCAL.remove(self)
        self.view.release()
        self._shm.close()
        atexit.unregister(self.close)
