"""The bench's Monitor with several workers: when its timing window starts.

``streamq bench --workers N`` times the group once every member handled a record. A small
backlog can be drained before the last member joins; the drain then ends at once, timed
from its first record, instead of waiting out the join (it waited 60 s, then timed nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing import shared_memory

import pytest

from streamq.bench import monitor as monitor_module
from streamq.bench.monitor import Monitor
from streamq.bench.spec import BenchSpec
from streamq.bench.tally import (
    _COUNT,
    _FIRST,
    _HEADER,
    _PHASE,
    _PID,
    _SLOT,
    Tally,
    _view,
    publish_local,
)


@pytest.fixture
def two_workers() -> Iterator[tuple[BenchSpec, memoryview]]:
    spec = BenchSpec(workers=2, messages=100, latency_messages=0)
    shm = shared_memory.SharedMemory(create=True, size=(_HEADER + spec.slots * _SLOT) * 8)
    view = _view(shm)
    try:
        yield replace(spec, shm=shm.name), view
    finally:
        view.release()
        shm.close()
        shm.unlink()


def _handled(view: memoryview, slot: int, n: int) -> None:
    base = _HEADER + slot * _SLOT
    view[base + _PID] = 1  # a live pid (init) whose CPU and memory mean nothing here
    view[base + _FIRST] = view[base + _FIRST] or time.monotonic_ns()
    view[base + _COUNT] = n


def test_a_backlog_drained_before_the_second_member_joins_ends_at_once(
    two_workers: tuple[BenchSpec, memoryview], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, view = two_workers
    monkeypatch.setattr(monitor_module, "JOIN_WAIT", 3600.0)  # a wait would be a hang
    _handled(view, 0, spec.messages)  # the first member took everything
    monitor = Monitor(spec)
    try:
        started = time.monotonic()
        result = monitor.measure(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
        took = time.monotonic() - started
    finally:
        monitor.close()
    # a hang detector, far from the join wait: the drain did not wait for the second member
    assert took < 60, f"waited {took:.0f} s for a member that had nothing left to handle"
    assert result["handled"] == spec.messages
    assert result["timed_records"] == spec.messages  # timed from the first record
    assert result["members_handling"] == 1


def test_the_window_starts_once_every_member_handled_a_record(
    two_workers: tuple[BenchSpec, memoryview],
) -> None:
    spec, view = two_workers
    _handled(view, 0, 10)
    _handled(view, 1, 5)
    monitor = Monitor(spec)

    def the_rest() -> None:  # arrives while the monitor samples
        time.sleep(0.2)
        _handled(view, 0, 60)
        _handled(view, 1, 40)

    later = threading.Thread(target=the_rest)
    later.start()
    try:
        result = monitor.measure(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    finally:
        later.join()
        monitor.close()
    assert result["handled"] == spec.messages
    assert result["timed_records"] == spec.messages - 15  # from the full group's start
    assert result["members_handling"] == 2


def test_a_handler_in_the_monitors_process_is_counted_without_a_thread(
    two_workers: tuple[BenchSpec, memoryview],
) -> None:
    """streamq's side runs no publishing thread that the raw loop lacks (one worker)."""
    spec, view = two_workers
    tally = Tally(spec.shm, 0, local=True)
    monitor = Monitor(spec)
    try:
        count = tally.counter()
        for _ in range(7):
            count(0)
        assert tally._publisher is None  # no thread: the monitor publishes as it reads
        assert view[_HEADER + _COUNT] == 0  # not yet published
        assert monitor.count() == 7
        view[_PHASE] = 1  # the latency records flow: the handler starts sampling
        publish_local()
        count(time.time_ns() // 1_000_000 - 3)
        assert monitor.count() == 8
        assert len(monitor.latencies()) == 1
    finally:
        tally.close()
        monitor.close()
    assert view[_HEADER + _COUNT] == 8  # published once more on close


def test_thread_cpu_names_each_threads_role() -> None:
    """CPU by thread role: the poll thread by its name, the loop by its id, the rest other."""
    from streamq.bench.monitor import cpu_by_role, thread_cpu

    go, release = threading.Event(), threading.Event()

    def burn(burnt: threading.Event) -> None:
        go.wait(10)  # after the first reading: all the burning falls between the two
        until = time.thread_time() + 0.2  # CPU time: at least 20 clock ticks of it
        while time.thread_time() < until:
            pass
        burnt.set()
        release.wait(10)

    burnt = [threading.Event(), threading.Event()]
    poll = threading.Thread(target=burn, args=(burnt[0],), name="streamq-poll[g]")
    loop = threading.Thread(target=burn, args=(burnt[1],))
    poll.start()
    loop.start()
    try:
        assert loop.native_id is not None and poll.native_id is not None
        before = thread_cpu(loop.native_id)
        assert before[loop.native_id][0] == "loop" and before[poll.native_id][0] == "poll"
        assert before[threading.get_native_id()][0] == "other"
        go.set()
        assert all(b.wait(10) for b in burnt)
        roles = cpu_by_role(before, thread_cpu(loop.native_id))
    finally:
        go.set()
        release.set()
        poll.join()
        loop.join()
    assert roles["poll"] > 0 and roles["loop"] > 0
