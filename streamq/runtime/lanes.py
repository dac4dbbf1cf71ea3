"""The hand-offs between the poll thread and the event loop, and the lanes units wait in.

A ``Unit`` goes from the poll thread to the loop (one per partition or key lane per batch);
a ``Completion`` comes back (one per report of finished records), through a deque whose
appends are thread-safe. A ``Lane`` holds the units of one partition (or key lane) and runs
one at a time, so its records are handled in log order. ``Reporter`` is the loop side of
the way back: what a lane finished is marked in the dedup store, timed, and queued for
the poll thread, which owns the offset tracker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from .. import failpoints
from ..brokers.base import Lease, Round
from ..dedup import coordinates
from ..dispatch import coordinate_keys
from ..handlers import HandlerSpec
from ..message import Message, TopicPartition
from ..offsets import Span, span_of
from ..stats import E2E_BUCKETS, HANDLER_BUCKETS, Labels, Latency

__all__ = [
    "ALL_KEYS",
    "UNORDERED_UNIT",
    "UNORDERED_UNIT_INLINE",
    "Chunk",
    "Completion",
    "FailedBatch",
    "FirstCallFailed",
    "Lane",
    "LaneKey",
    "Probe",
    "Reporter",
    "Retrying",
    "RunUnit",
    "Unit",
    "dedup_keys",
]

LaneKey = tuple[TopicPartition, int]

# ordering="none": the largest unit a lane takes from its partition's shared queue. Small
# enough that a record stuck in a retry holds few others back; large enough that a unit's
# fixed cost (a dedup check, a report, a pool round trip) is spread over several records.
UNORDERED_UNIT = 16
UNORDERED_UNIT_INLINE = 64  # inline handlers run one at a time anyway

# The lane number of a partition's shared lane when its handler merges keys
# (``HandlerSpec.merges_keys``); key lanes are numbered from 0.
ALL_KEYS = -1


class Unit(NamedTuple):
    """One ordered unit of a lane, handed from the poll thread to the loop."""

    lane: LaneKey
    epoch: int  # the partition's ownership epoch: a new assignment starts a new lane
    spec: HandlerSpec
    lease: Lease | None
    records: list[Message]


class Completion(NamedTuple):
    """Records a lane finished (handled, dead-lettered, or skipped as duplicates)."""

    tp: TopicPartition
    epoch: int  # completions of an earlier ownership are ignored by the tracker
    records: list[Message] | Span  # a Span: the lane's records are freed on its thread
    halted: bool  # the lane stopped at the record after these: the partition halts


class Probe(list[Message]):
    """One suspect record (``streamq.crashes``), handled alone and never merged into a batch.

    ``starts`` is how often it was started alone before, each time by a worker that then died.
    """

    __slots__ = ("starts",)

    def __init__(self, msg: Message, count: int) -> None:
        super().__init__((msg,))
        self.starts = count


class Chunk(list[Message]):
    """Part of a dead owner's range (``streamq.crashes``), never merged with other units.

    Noted in Redis while it runs, so a death inside it narrows the suspects down to it.
    """

    __slots__ = ()


class Cost:
    """Wall time a record of one handler's key lanes took, smoothed (``Lanes._spread``).

    Every lane of the handler adds to it (the shared lanes and the key lanes of all its
    partitions): a shared lane that handed all of a unit on measures nothing itself. An
    average over the last few units, so one slow unit (a GC pause, the poll thread's turn
    with the GIL) does not split the next ones.
    """

    __slots__ = ("per_record",)

    def __init__(self) -> None:
        self.per_record = 0.0

    def add(self, seconds: float, records: int) -> None:
        self.per_record += (seconds / records - self.per_record) * 0.25


class Gapped(list[Message]):
    """Records a partition's shared lane kept when some of their run went to key lanes.

    Not a run of records tracked next to each other, so reported record by record rather
    than as a ``Span``; what is left of it after a hold stays ``Gapped`` (``Lanes._run_here``).
    """

    __slots__ = ()


class FirstCallFailed(list[Message]):
    """Records whose handler's first call already failed with ``exc``, outside their task.

    The lane's task goes straight to the retries (``Lanes._recover``), so they get no more
    attempts than they would have had in it.
    """

    __slots__ = ("exc",)

    def __init__(self, msgs: Iterable[Message], exc: BaseException) -> None:
        super().__init__(msgs)
        self.exc = exc


class Retrying(FirstCallFailed):
    """A record whose handler failed in its partition's shared lane, recovered in its key's."""

    __slots__ = ()

    def __init__(self, msg: Message, exc: BaseException) -> None:
        super().__init__((msg,), exc)


class FailedBatch(FirstCallFailed):
    """A batch whose handler failed in the callback that brought it (``_run_batch_here``)."""

    __slots__ = ()


# How a lane runs one unit: its executor's per-record loop, or the batch path; chosen once
# when the lane is set up. Returns how many records of the unit finished.
RunUnit = Callable[["Lane", list[Message]], Awaitable[int]]


class Lane:
    """Ordered work of one partition (or key lane); lives on the event loop thread."""

    __slots__ = (
        "cost",
        "dead_lettered",
        "dead_run",
        "epoch",
        "halted",
        "here",
        "key",
        "labels",
        "last_dead",
        "lease",
        "may_span",
        "origin",
        "peers",
        "pending",
        "progress",
        "reported",
        "run",
        "seq_base",
        "spans",
        "spec",
        "spill",
        "stopped",
        "task",
        "timed_at",
        "wake",
        "yielded_at",
    )

    def __init__(
        self,
        key: LaneKey,
        epoch: int,
        spec: HandlerSpec,
        lease: Lease | None,
        labels: Labels,
        run: RunUnit,
        origin: HandlerSpec | None = None,
    ) -> None:
        self.key = key
        self.labels = labels
        self.epoch = epoch
        self.spec = spec
        self.origin = origin or spec  # before an outbox bound it to this lane
        self.run = run
        self.lease = lease  # Redis: no handler starts past lease.deadline
        # ordering="none": the partition's lanes share lane 0's deque; lane 0 lists them
        self.pending: deque[list[Message]] = deque()
        self.peers: list[Lane] | None = None
        # a partition's shared lane (ALL_KEYS): hands unit[i:] to the key lanes, the first
        # record with its handler's failure (Lanes.spill)
        self.spill: Callable[[Lane, list[Message], int, BaseException | None], None] | None = None
        self.task: asyncio.Task[None] | None = None
        # its units are runs of records tracked next to each other (a partition's lane, no
        # record skipped or handed elsewhere): reported as a Span (``Reporter.report``)
        self.spans = False
        self.may_span = False  # spans when its units are runs; a shared lane's are not always
        # ordering="key" with shared lanes: its handler's time per record, so that a hot
        # key leaves a shared lane only when its burst would hold the other keys up
        self.cost: Cost | None = None
        # an idle lane's unit may run in the callback that brings it (``Lanes._run_here``)
        self.here = False
        self.stopped = False
        self.halted = False
        self.wake = asyncio.Event()
        self.dead_lettered = 0  # in the current unit, so "handled" excludes them
        self.progress = 0  # records of the current unit finished
        self.reported = 0  # of those, already handed to the poll thread
        self.seq_base = 0  # records of this lane before the current unit
        self.last_dead = -2  # lane sequence number of the last dead-lettered record
        self.dead_run = 0  # consecutive dead-lettered records ending at last_dead
        self.yielded_at = 0.0  # inline lanes: when this lane last got the loop back
        self.timed_at = 0.0  # metrics: when the records being reported started running

    def take(self, limit: int) -> list[Message]:
        """The next unit: one polled chunk, or up to ``limit`` records for batch handlers.

        Units stay chunk-sized for per-record handlers: a revoke or stop waits for at most
        one unit, and no list is copied.
        """
        first = self.pending.popleft()
        if not self.spec.batch or type(first) is not list:  # a Probe or a Chunk stays whole
            return first
        if len(first) > limit:
            self.pending.appendleft(first[limit:])
            return first[:limit]
        pending = self.pending
        while pending and type(pending[0]) is list and len(first) + len(pending[0]) <= limit:
            first = first + pending.popleft()
        return first

    def stop(self) -> None:
        self.stopped = True
        self.pending.clear()
        self.wake.set()


class Reporter:
    """Hands what lanes finished back to the poll thread (loop thread only).

    ``completions`` is shared with the poll thread, which drains it; ``handler_latency`` and
    ``e2e_latency`` are read by ``streamq.metrics`` from its own thread.
    """

    def __init__(
        self,
        completions: deque[Completion],
        *,
        metrics: bool,
        round: Round | None = None,
    ) -> None:
        self.completions = completions
        # a share group's round, counted down here (its poll waits for the end: Round)
        self.round = round
        self._metrics = metrics
        self.handler_latency: dict[Labels, Latency] = {}
        self.e2e_latency: dict[Labels, Latency] = {}

    def report(self, lane: Lane, unit: list[Message], upto: int, halted: bool = False) -> None:
        """Hand the unit's records finished since the last report to the poll thread.

        With a dedup store their keys are marked first, so no commit passes a record
        before the store knows it was handled.
        """
        start = lane.reported
        if upto > start or halted:
            done = unit if start == 0 and upto == len(unit) else unit[start:upto]
            if failpoints.ACTIVE and done:
                failpoints.hit("after_handle")
            store = lane.spec.dedup
            if store is not None and done:
                store.mark(dedup_keys(lane.spec, done))
                if failpoints.ACTIVE:
                    failpoints.hit("after_mark")
            # A Span leaves the records on this thread, where the handler just used them:
            # the poll thread completes them without reading each one (on two CPUs, every
            # record's cache lines moved back to it, and it freed them)
            records = span_of(done) if lane.spans else done
            self.completions.append(Completion(lane.key[0], lane.epoch, records, halted))
            if self.round is not None:
                self.round.finished(len(done))
            lane.reported = upto
            if self._metrics and done:
                self._time(lane, done)

    def finished(self, lane: Lane, unit: list[Message], upto: int, marks: bool) -> None:
        """Mark what a lane finished before it awaits mid-unit (a retry, a DLQ write, a lease).

        Other lanes run meanwhile, and a crash there must not re-handle records the store
        could have known (seen on Kafka: a slice handled just before a poison record ran
        again after a crash in another lane during its dead-lettering).
        """
        lane.progress = upto
        if marks:
            self.report(lane, unit, upto)

    def _time(self, lane: Lane, done: list[Message]) -> None:
        """Handler and end-to-end latency of records just finished, once per report.

        Records reported together are counted at their mean handler time; their end-to-end
        latency at the mean of the first and last record's timestamps.
        """
        now = time.monotonic()
        n = len(done)
        latency = self.handler_latency.get(lane.labels)
        if latency is None:
            latency = self.handler_latency[lane.labels] = Latency(HANDLER_BUCKETS)
        latency.add((now - lane.timed_at) / n, n)
        lane.timed_at = now
        first, last = done[0].timestamp, done[-1].timestamp
        if first is not None and last is not None and first > 0 and last > 0:  # -1: unknown
            e2e = self.e2e_latency.get(lane.labels)
            if e2e is None:
                e2e = self.e2e_latency[lane.labels] = Latency(E2E_BUCKETS)
            e2e.add(max(0.0, time.time() - (first + last) / 2000.0), n)


def dedup_keys(spec: HandlerSpec, unit: list[Message]) -> list[str]:
    key = spec.dedup_key
    if key is coordinates:
        return coordinate_keys(unit)  # the default, built in one C loop
    return [key(m) for m in unit]
