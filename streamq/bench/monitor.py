"""One drain, measured: when it starts and ends, its CPU, memory and end-to-end latency.

The ``Monitor`` samples the shared counters every few milliseconds from outside the hot path;
CPU and memory come from ``/proc`` for every worker process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .spec import BenchSpec
from .tally import (
    _COUNT,
    _CPU0,
    _FIRST,
    _HEADER,
    _LAT0,
    _LAT_N,
    _OUTPUTS,
    _PHASE,
    _PID,
    _SLOT,
    _attach,
    _view,
    publish_local,
)

if TYPE_CHECKING:
    from .workloads import LatencySender


# Seconds a drain of several workers waits for the last member's first record.
JOIN_WAIT = 60.0


def _stat_cpu(path: str) -> tuple[str, float] | None:
    """A ``/proc`` stat file's command name and CPU seconds (user + system); None if gone."""
    try:
        with open(path) as f:
            stat = f.read()
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], cpu


def _proc_cpu(pid: int) -> float:
    read = _stat_cpu(f"/proc/{pid}/stat")
    return 0.0 if read is None else read[1]


def _proc_mem(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def thread_cpu(loop: int | None) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process so far, by thread id, with its role.

    Roles: ``poll`` (streamq's poll threads), ``loop`` (thread id ``loop``: where the handlers
    or the raw loop's work run), ``client`` (the client library's own threads, librdkafka's
    ``rdk:*``), ``other`` (the monitor, producers, watchdogs). Linux only (``/proc``);
    elsewhere empty.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in map(int, tids):
        read = _stat_cpu(f"/proc/self/task/{tid}/stat")
        if read is None:
            continue  # ended since the listing
        comm, cpu = read
        name = names.get(tid, "")
        if name.startswith("streamq-poll"):
            role = "poll"
        elif tid == loop:
            role = "loop"
        elif comm.startswith("rdk:"):
            role = "client"
        else:
            role = "other"
        out[tid] = (role, cpu)
    return out


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per role between two ``thread_cpu`` readings (threads may come and go)."""
    roles: dict[str, float] = {}
    for tid, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - before.get(tid, (role, 0.0))[1]
    return roles


class Monitor:
    """Reads the shared slots: when the drain starts and ends, and what it cost."""

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self._shm = _attach(spec.shm)
        self.view = _view(self._shm)
        # the thread of this process that runs the handlers (or the raw loop's work), if any
        self.loop_thread: int | None = None

    def slots(self) -> range:
        return range(self.spec.slots)

    def count(self) -> int:
        publish_local()
        v = self.view
        return sum(v[_HEADER + s * _SLOT + _COUNT] for s in self.slots())

    def pids(self) -> list[int]:
        v = self.view
        return [p for s in self.slots() if (p := v[_HEADER + s * _SLOT + _PID])]

    def outputs(self) -> int:
        """Outputs a reader sees (``--transform``), as ``outputs.count_outputs`` counted them."""
        return self.view[_OUTPUTS]

    def members_handling(self) -> int:
        """Workers that handled a record (pool processes' slots come after theirs)."""
        v = self.view
        return sum(1 for s in range(self.spec.workers) if v[_HEADER + s * _SLOT + _COUNT])

    def all_workers_started(self) -> bool:
        return self.members_handling() == self.spec.workers

    def cpu_at_first(self) -> float:
        v = self.view
        return sum(v[_HEADER + s * _SLOT + _CPU0] for s in self.slots()) / 1e9

    def cpu_now(self, pids: list[int]) -> float:
        if pids == [os.getpid()]:
            return time.process_time()  # this process: exact, not in clock ticks
        return sum(_proc_cpu(p) for p in pids)

    def first_ns(self) -> int:
        v = self.view
        stamps = [v[_HEADER + s * _SLOT + _FIRST] for s in self.slots()]
        return min(t for t in stamps if t) if any(stamps) else time.monotonic_ns()

    def latencies(self) -> list[int]:
        v = self.view
        out: list[int] = []
        for s in self.slots():
            base = _HEADER + s * _SLOT
            out.extend(v[base + _LAT0 + i] for i in range(v[base + _LAT_N]))
        return out

    def measure(
        self, produce_latency: Callable[[], LatencySender], done: Callable[[], None]
    ) -> dict[str, Any]:
        spec = self.spec
        n = spec.messages
        deadline_start = time.monotonic() + 120
        while self.count() == 0:
            if time.monotonic() > deadline_start:
                raise RuntimeError("no record was handled within 120 s of starting")
            time.sleep(0.002)
        started = self.first_ns()
        base = 0  # records before the window: only with several workers
        cpu_base: float | None = None
        if spec.workers > 1:
            # Members join one after another (a rebalance each): the window starts once every
            # worker handled a record, so it measures the group at full strength. A backlog
            # the first members drain before the last one joins (a small one) is measured
            # from its first record instead: waiting out the join would time nothing.
            join_by = time.monotonic() + JOIN_WAIT
            while not self.all_workers_started() and time.monotonic() < join_by:
                if self.count() >= n:
                    break
                time.sleep(0.002)
            if self.all_workers_started() or self.count() < n:
                started, base = time.monotonic_ns(), self.count()
                cpu_base = self.cpu_now(self.pids())
        pids = self.pids()
        # which thread spends the CPU: for a drain in this process (one worker) only
        threads_at_start = thread_cpu(self.loop_thread) if pids == [os.getpid()] else {}
        rss_start = max((_proc_mem(p, "VmRSS:") for p in pids), default=0.0)
        limit = None if spec.max_seconds is None else time.monotonic() + spec.max_seconds
        # a transform drain ends when its outputs are visible, not when its handlers returned
        wanted = n if spec.transform else 0
        while (handled := self.count()) < n or self.outputs() < wanted:
            if limit is not None and time.monotonic() > limit:
                break
            time.sleep(0.002)
        # from the first record handled (stamped by its handler) to the sample that saw the
        # last one: at most one sampling interval late, plus, for streamq, its counting
        # thread's millisecond (tally)
        elapsed = (time.monotonic_ns() - started) / 1e9
        roles = (
            cpu_by_role(threads_at_start, thread_cpu(self.loop_thread)) if threads_at_start else {}
        )
        pids = self.pids()
        # CPU from each process's first record (its handler stamped it) to now
        cpu = self.cpu_now(pids) - (self.cpu_at_first() if cpu_base is None else cpu_base)
        timed = handled - base
        rss_peak = max((_proc_mem(p, "VmHWM:") for p in pids), default=0.0)
        rss_end = max((_proc_mem(p, "VmRSS:") for p in pids), default=0.0)
        outputs = self.outputs() if spec.transform else None
        lat: list[int] = []
        if handled >= n and spec.latency_topic:
            sender = produce_latency()  # its warm-up record is on its way, not timed
            warm_by = time.monotonic() + 30
            while self.count() < n + 1 and time.monotonic() < warm_by:
                time.sleep(0.005)
            self.view[_PHASE] = 1
            publish_local()
            time.sleep(0.05)  # streamq's counting threads turn latency sampling on (tally)
            sender.go()
            wait_until = time.monotonic() + 10 + spec.latency_messages / spec.latency_rate
            want = n + 1 + spec.latency_messages
            while self.count() < want and time.monotonic() < wait_until:
                time.sleep(0.005)
            lat = sorted(self.latencies())
        done()
        return {
            "handled": handled,
            "outputs": outputs,
            "seconds": round(elapsed, 4),
            "msg_s": round(timed / elapsed) if elapsed > 0 else 0,
            "mb_s": round(timed * spec.size / elapsed / 1e6, 2) if elapsed > 0 else 0.0,
            "cpu_s_per_m": round(cpu / timed * 1e6, 2) if timed else None,
            # the same, by thread role (thread_cpu); the window starts a sample after the
            # first record, so the roles add up to a little less than cpu_s_per_m
            "thread_cpu_s_per_m": {
                role: round(seconds / timed * 1e6, 2) for role, seconds in sorted(roles.items())
            }
            if roles and timed
            else None,
            "timed_records": timed,
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "p50_ms": _pct(lat, 0.50),
            "p99_ms": _pct(lat, 0.99),
            "latency_samples": len(lat),
            "workers": len(pids),
            # workers that handled a record: fewer than --workers when a small backlog was
            # drained before the last member joined (the window then has no full group)
            "members_handling": self.members_handling(),
        }

    def close(self) -> None:
        self.view.release()
        self._shm.close()


def _pct(values: list[int], q: float) -> float | None:
    if not values:
        return None
    return float(values[min(len(values) - 1, int(q * len(values)))])
