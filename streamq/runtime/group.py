"""One consumer group inside one worker: a poll thread and ordered lanes on the event loop.

Threads and ownership:

- The *poll thread* owns the broker consumer, the offset tracker and every commit. It polls,
  splits each batch into units (``streamq.dispatch``), tracks their offsets, hands the units
  to the event loop in one call per batch, applies completions, commits, and pauses or
  resumes partitions. Rebalance callbacks run on it too. Handlers never run on it, so a slow
  handler or a long backoff never delays a poll (``max.poll.interval.ms`` stays safe).
- The *event loop* runs one task per lane (a partition, or a key lane of one). A lane runs
  one unit at a time, so records of a lane are handled in log order; lanes run concurrently.
  Sync handlers run inline on the loop (cheapest for cheap work); async handlers are awaited.
- Completions go back through a deque (thread-safe appends), tagged with the ownership epoch,
  so a completion that arrives after its partition was revoked is ignored.

Every record ends in exactly one outcome reported to the tracker: handled, or dead-lettered
once its DLQ write was acknowledged. A record that can be neither (DLQ disabled or a
process-critical error) halts its partition uncommitted; it is redelivered after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from .. import failpoints
from ..brokers.base import Backend, Broker, Lease, ProducerBackend
from ..crashes import CHUNK, CrashCounter, Suspects
from ..dedup import coordinates
from ..dispatch import Dispatcher, call_each, call_each_until, coordinate_keys
from ..dlq import dead_letter_record
from ..errors import BrokerError, MemberFenced, PoisonMessage, Reject, WorkerLost
from ..handlers import CommitMode, Executor, HandlerSpec, Ordering
from ..logs import about, get_logger
from ..message import Headers, Message, TopicPartition
from ..metrics import (
    COMMIT_BUCKETS,
    E2E_BUCKETS,
    HANDLER_BUCKETS,
    GroupSample,
    Latency,
    PartitionSample,
)
from ..offsets import OffsetTracker
from ..retry import NEVER_POISON
from ..settings import Settings
from ..tracing import tracer
from .executors import (
    BrokenProcessPool,
    PoolProcessDied,
    Pools,
    call_each_leased,
    deadline_marker,
    process_chunk,
    read_deadline_marker,
)

__all__ = ["GroupRunner", "Stats"]

log = get_logger("streamq.worker")

LaneKey = tuple[TopicPartition, int]
# (group, topic, partition, handler): the labels of per-partition counters and metrics
Labels = tuple[str, str, str, str]
# (tp, epoch, finished records, halted): one entry per unit, appended by the loop thread
Completion = tuple[TopicPartition, int, list[Message], bool]

# (lane, epoch, handler, lease, records): one ordered unit, handed from poll thread to loop
Unit = tuple[LaneKey, int, HandlerSpec, "Lease | None", list[Message]]

# Seconds between the poll thread's samples for health and gauges, and between lag samples
# (lag may ask the broker: Redis XINFO).
_SAMPLE_INTERVAL = 0.5
_LAG_INTERVAL = 2.0
# A partition not paused by us, with nothing in flight, whose fetch position stays behind its
# high watermark this long is not being fetched: said in the log, resumed, shown to health.
UNFETCHED_AFTER = 10.0
_UNFETCHED_INTERVAL = 2.0

# Seconds cancelled lanes get to unwind and report what they finished.
_CANCEL_GRACE = 2.0

# An inline lane looks at the clock every INLINE_SLICE records and yields the loop once it
# held it for INLINE_HOLD seconds: a revoke or stop waits on a sync handler for about that
# long (or one slice of slow handlers), while fast handlers pay one loop turn per few
# thousand records instead of one per slice.
INLINE_SLICE = 64
INLINE_HOLD = 0.005

# Records per round trip to a pool: a thread pool chunk costs about 50 us, a process pool
# chunk a pickle of the records both ways.
POOL_CHUNK_THREADS = 64
POOL_CHUNK_PROCESSES = 256


class Stats:
    """Outcome counters keyed by (group, topic, partition, handler), updated once per unit.

    The runtime writes the ``*_by`` counters (the event loop thread, or the poll thread for
    ``consumed`` and ``paused``); ``streamq.metrics`` exports them. The by-topic views
    (``stats.handled["orders"]``) are for tests and summaries.
    """

    KINDS = ("consumed", "handled", "failed", "retried", "dead_lettered", "deduplicated", "paused")

    def __init__(self) -> None:
        self.consumed_by: Counter[Labels] = Counter()
        self.handled_by: Counter[Labels] = Counter()
        self.failed_by: Counter[Labels] = Counter()
        self.retried_by: Counter[Labels] = Counter()
        self.dead_lettered_by: Counter[Labels] = Counter()
        self.deduplicated_by: Counter[Labels] = Counter()
        self.paused_by: Counter[Labels] = Counter()
        self.by_labels: dict[str, Counter[Labels]] = {
            kind: getattr(self, f"{kind}_by") for kind in self.KINDS
        }

    def _by_topic(self, kind: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for labels, n in list(self.by_labels[kind].items()):
            out[labels[1]] += n
        return out

    consumed = property(lambda self: self._by_topic("consumed"))
    handled = property(lambda self: self._by_topic("handled"))
    failed = property(lambda self: self._by_topic("failed"))
    retried = property(lambda self: self._by_topic("retried"))
    dead_lettered = property(lambda self: self._by_topic("dead_lettered"))
    deduplicated = property(lambda self: self._by_topic("deduplicated"))
    paused = property(lambda self: self._by_topic("paused"))

    def summary(self) -> str:
        """One line for the end of a run."""
        total = {kind: sum(self.by_labels[kind].values()) for kind in self.KINDS}
        return (
            f"handled {total['handled']}, "
            f"dead-lettered {total['dead_lettered']}, "
            f"retried {total['retried']}, "
            f"paused {total['paused']} times"
        )

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {kind: dict(self._by_topic(kind)) for kind in self.KINDS}


class Probe(list[Message]):
    """One suspect record (``streamq.crashes``), handled alone and never merged into a batch.

    ``starts`` is how often it was started alone before, each time by a worker that then died.
    """

    __slots__ = ("starts",)

    def __init__(self, msg: Message, count: int) -> None:
        super().__init__((msg,))
        self.starts = count


def _plan_of(suspects: Suspects) -> str:
    """How a new owner goes through what a dead one left: said once, when it is assigned."""
    parts = []
    if suspects.chunked:
        parts.append(f"those in chunks of up to {CHUNK} records")
    elif suspects.high >= suspects.low:
        parts.append("those one at a time")
    if suspects.solo:
        ranges = ", ".join(f"{a}..{b}" for a, b in suspects.solo)
        parts.append(f"offsets {ranges} (running when a worker died) one at a time")
    if suspects.counts:
        parts.append(f"{len(suspects.counts)} record(s) that were running alone one at a time")
    return "; ".join(parts) or "nothing"


class Chunk(list[Message]):
    """Part of a dead owner's range (``streamq.crashes``), never merged with other units.

    Noted in Redis while it runs, so a death inside it narrows the suspects down to it.
    """

    __slots__ = ()


class Lane:
    """Ordered work of one partition (or key lane); lives on the event loop thread."""

    __slots__ = (
        "dead_lettered",
        "dead_run",
        "epoch",
        "halted",
        "key",
        "labels",
        "last_dead",
        "lease",
        "pending",
        "progress",
        "reported",
        "seq_base",
        "spec",
        "stopped",
        "task",
        "timed_at",
        "wake",
        "yielded_at",
    )

    def __init__(
        self, key: LaneKey, epoch: int, spec: HandlerSpec, lease: Lease | None, labels: Labels
    ) -> None:
        self.key = key
        self.labels = labels
        self.epoch = epoch
        self.spec = spec
        self.lease = lease  # Redis: no handler starts past lease.deadline
        self.pending: deque[list[Message]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.halted = False
        self.wake = asyncio.Event()
        self.dead_lettered = 0  # in the current unit, so "handled" excludes them
        self.progress = 0  # records of the current unit finished
        self.reported = 0  # of those, already handed to the poll thread
        self.seq_base = 0  # records of this lane before the current unit
        self.last_dead = -2  # lane sequence number of the last dead-lettered record
        self.dead_run = 0  # consecutive dead-lettered records ending at last_dead
        self.yielded_at = 0.0  # inline lanes: when this lane last gave the loop back
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


class GroupRunner:
    """Consumes one group's topics with the handlers registered for them."""

    def __init__(
        self,
        group: str,
        specs: dict[str, HandlerSpec],
        broker: Broker,
        producer: ProducerBackend,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        stats: Stats,
        on_critical: Callable[[BaseException], None],
        crashes: CrashCounter | None = None,
        probe_lock: asyncio.Lock | None = None,
        backend: Backend | None = None,
        pools: Pools | None = None,
        *,
        metrics: bool = False,
    ) -> None:
        self.group = group
        self._tracer = tracer() if settings.tracing else None
        if self._tracer is not None:
            specs = {topic: self._tracer.traced(spec) for topic, spec in specs.items()}
        self._specs = specs
        self._settings = settings
        self._backend: Backend = backend or broker.consumer(group, settings)
        self._producer = producer
        self._loop = loop
        self._stats = stats
        self._on_critical = on_critical
        self._dispatcher = Dispatcher()
        self._tracker = OffsetTracker()
        self._crashes = crashes
        self._pools = pools or Pools(settings.threads, settings.processes)
        # one suspect at a time in the whole worker, so a death is charged to one record only
        self._probe_lock = probe_lock or asyncio.Lock()
        self._suspects: dict[TopicPartition, Suspects] = {}  # poll thread
        # poll-thread state
        self._assigned: dict[TopicPartition, int] = {}
        self._leases: dict[TopicPartition, Lease | None] = {}
        self._paused: set[TopicPartition] = set()
        self._halted: set[TopicPartition] = set()
        self._halted_in_run: set[TopicPartition] = set()  # survives revokes: for the outcome
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._closing = False
        self._labels: dict[TopicPartition, Labels] = {}
        # progress: the position each partition last reached, and when (wall time)
        self._position_at: dict[TopicPartition, tuple[int | None, float]] = {}
        self._connected = True
        self._lags: dict[TopicPartition, int | None] = {}
        self._next_sample = 0.0
        self._next_lag = 0.0
        # metrics (streamq.metrics.Exporter reads these from its own thread)
        self._metrics = metrics
        self.last_poll = 0.0
        self.sample: GroupSample | None = None
        self.handler_latency: dict[Labels, Latency] = {}
        self.e2e_latency: dict[Labels, Latency] = {}
        self.commit_latency: dict[str, Latency] = {}
        self.commit_failures: Counter[tuple[str]] = Counter()
        self.rebalances: Counter[tuple[str, str]] = Counter()
        self.ownership_changes: Counter[tuple[str, str]] = Counter()
        # backend events (Redis: streams reset, entries lost to trims), if it counts any
        events = getattr(self._backend, "events", None)
        self.backend_events: Counter[tuple[str, str, str]] = (
            events if isinstance(events, Counter) else Counter()
        )
        # asynchronous commits that failed (Kafka): the tracker had marked them committed
        self._take_failed_commits: Callable[[], dict[TopicPartition, int]] | None = getattr(
            self._backend, "take_failed_commits", None
        )
        # records that sit past the fetch position of a partition nobody fetches (Kafka)
        self._unfetched_of: (
            Callable[[list[TopicPartition]], dict[TopicPartition, tuple[int, int]]] | None
        ) = getattr(self._backend, "unfetched", None)
        # partition -> (the position it is stuck at, since when; monotonic)
        self._unfetched_since: dict[TopicPartition, tuple[int, float]] = {}
        self._unfetched_told: set[TopicPartition] = set()
        self._next_unfetched = 0.0
        # loop-thread state
        self._lanes: dict[LaneKey, Lane] = {}
        # shared
        self._completions: deque[Completion] = deque()
        self._stop = threading.Event()
        self.closed = threading.Event()
        self.idle_since: float | None = None
        self.timed_out = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._poll_main, name=f"streamq-poll[{group}]", daemon=True
        )

    # -- lifecycle (any thread) ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def specs(self) -> dict[str, HandlerSpec]:
        """The group's handlers by topic."""
        return self._specs

    @property
    def halted(self) -> list[TopicPartition]:
        """Partitions that halted at a record during this run (read after it ended)."""
        return sorted(self._halted_in_run)

    # -- the poll thread -----------------------------------------------------------------------

    def _poll_main(self) -> None:
        settings = self._settings
        failures = 0
        try:
            self._backend.subscribe(
                list(self._specs), self._on_assign, self._on_revoke, self._on_lost
            )
            while not self._stop.is_set():
                self.last_poll = now = time.time()
                if self._metrics and now >= self._next_sample:
                    self._take_sample(now)
                self._apply_completions()
                self._maybe_commit()
                if self._unfetched_of is not None and time.monotonic() >= self._next_unfetched:
                    self._check_unfetched()
                try:
                    batch = self._backend.poll_batch(
                        settings.max_poll_records, settings.poll_timeout
                    )
                except MemberFenced:
                    raise
                except BrokerError as exc:
                    self._connected = False
                    failures += 1
                    delay = min(5.0, 0.1 * 2 ** min(failures, 9))
                    if failures == 1 or failures % 10 == 0:
                        log.warning(
                            "group %s: poll failed (%s); retrying in %.1fs", self.group, exc, delay
                        )
                    self._stop.wait(delay)
                    continue
                failures = 0
                self._connected = True
                if self._take_failed_commits is not None:
                    failed = self._take_failed_commits()  # served inside that poll
                    if failed:
                        self._tracker.mark_uncommitted(failed)
                if batch:
                    self.idle_since = None
                    if failpoints.ACTIVE:
                        failpoints.hit("after_poll")
                    self._dispatch(batch)
                else:
                    self._check_idle()
        except BrokerError as exc:  # said clearly already; no traceback for an outage
            self.error = exc
            log.error("group %s: %s; stopping this worker", self.group, exc)
        except BaseException as exc:
            self.error = exc
            log.exception("group %s: poll loop failed; stopping this worker", self.group)
        finally:
            try:
                self._shutdown()
            finally:
                self.closed.set()

    def _dispatch(self, batch: list[Message]) -> None:
        units: list[Unit] = []
        lanes = self._settings.key_lanes
        tracker = self._tracker
        crashes = self._crashes
        polled: dict[TopicPartition, tuple[int, int, int]] = {}
        consumed = self._stats.consumed_by
        metrics = self._metrics
        now = 0.0
        for tp, msgs in self._dispatcher.split(batch).items():
            epoch = self._assigned.get(tp)
            if epoch is None:
                continue  # fetched just before a revoke: it will be redelivered to the owner
            spec = self._specs[tp.topic]
            part = tracker.track(tp, msgs)
            consumed[self._labels[tp]] += len(msgs)
            if metrics and part.in_flight == len(msgs):  # work after idling: timed from now
                now = now or time.time()
                self._position_at[tp] = (part.position, now)
            if spec.commit is CommitMode.BEFORE:
                if not self._commit_before(tp, msgs):
                    continue
            elif crashes is not None:
                low = part.position  # the first unfinished offset; may be 0
                # records, not offsets: Redis offsets jump by 2**20 at each millisecond
                polled[tp] = (msgs[0].offset if low is None else low, msgs[-1].offset, part.held)
            lease = self._leases.get(tp)
            suspects = self._suspects.get(tp) if self._suspects else None
            if suspects is not None:
                self._add_with_suspects(units, tp, epoch, spec, lease, msgs, suspects)
            elif spec.ordering is Ordering.KEY:
                for lane, sub in self._dispatcher.split_keys(msgs, lanes).items():
                    units.append(((tp, lane), epoch, spec, lease, sub))
            else:
                units.append(((tp, 0), epoch, spec, lease, msgs))
            if (
                part.in_flight >= self._settings.max_in_flight
                or part.bytes >= self._settings.max_in_flight_bytes
            ):
                self._pause([tp])
        if self._over_worker_cap(1.0):
            self._pause(list(self._assigned))
        if polled and crashes is not None:
            crashes.note_polled(polled)  # before any handler can start on these records
        if units:
            self._loop.call_soon_threadsafe(self._enqueue, units)

    def _add_with_suspects(
        self,
        units: list[Unit],
        tp: TopicPartition,
        epoch: int,
        spec: HandlerSpec,
        lease: Lease | None,
        msgs: list[Message],
        suspects: Suspects,
    ) -> None:
        """Suspects become single-record probes, the dead owner's range chunks, in order."""
        key_lanes = self._settings.key_lanes if spec.ordering is Ordering.KEY else 0
        split_keys = self._dispatcher.split_keys
        chunk = min(CHUNK, spec.max_batch) if spec.batch else CHUNK
        for kind, run in suspects.plan(msgs, chunk):
            if kind == "solo":
                msg = run[0]
                lane = next(iter(split_keys(run, key_lanes))) if key_lanes else 0
                count = suspects.starts(msg.offset)
                units.append(((tp, lane), epoch, spec, lease, Probe(msg, count or 0)))
                continue
            wrap = Chunk if kind == "chunk" else list
            if key_lanes:
                for lane, sub in split_keys(run, key_lanes).items():
                    units.append(((tp, lane), epoch, spec, lease, wrap(sub)))
            else:
                units.append(((tp, 0), epoch, spec, lease, wrap(run)))
        if msgs[-1].offset >= suspects.last:
            del self._suspects[tp]  # past every suspect: back to normal units
            log.info(
                "group %s: %s[%d] is past what its previous owner left: %d records in chunks, "
                "%d alone",
                self.group, tp.topic, tp.partition, suspects.in_chunks, suspects.alone,
            )  # fmt: skip

    def _commit_before(self, tp: TopicPartition, msgs: list[Message]) -> bool:
        """At-most-once: the position moves past the records before any handler sees them."""
        position = {tp: msgs[-1].offset + 1}
        try:
            self._timed_commit(position, sync=True)
        except BrokerError as exc:
            log.warning(
                "group %s: commit before handling failed (%s); not handling", self.group, exc
            )
            self._tracker.complete(tp, self._assigned[tp], msgs)
            return False
        self._tracker.mark_committed(position)
        return True

    def _apply_completions(self) -> None:
        completions = self._completions
        tracker = self._tracker
        progress = self._position_at
        metrics = self._metrics
        now = 0.0
        while completions:
            tp, epoch, msgs, halted = completions.popleft()
            if not tracker.complete(tp, epoch, msgs):
                continue
            if metrics:  # for liveness: when the partition's position last moved
                position = tracker.parts[tp].position
                seen = progress.get(tp)
                if seen is None or seen[0] != position:
                    now = now or time.time()
                    progress[tp] = (position, now)
            self._since_commit += len(msgs)
            if halted:
                self._halted.add(tp)
                self._halted_in_run.add(tp)
                self._pause([tp])
        if self._paused:
            self._resume_drained()

    def _resume_drained(self) -> None:
        if self._over_worker_cap(0.5):
            return
        s = self._settings
        ready = []
        for tp in self._paused:
            part = self._tracker.parts.get(tp)
            if tp in self._halted or part is None:
                continue
            if part.in_flight <= s.max_in_flight // 2 and part.bytes <= s.max_in_flight_bytes // 2:
                ready.append(tp)
        if ready:
            self._paused.difference_update(ready)
            self._backend.resume(ready)

    def _over_worker_cap(self, fraction: float) -> bool:
        s = self._settings
        return (
            self._tracker.in_flight_records >= s.worker_max_in_flight * fraction
            or self._tracker.in_flight_bytes >= s.worker_max_in_flight_bytes * fraction
        )

    def _pause(self, tps: list[TopicPartition]) -> None:
        new = [tp for tp in tps if tp not in self._paused]
        if new:
            self._paused.update(new)
            self._backend.pause(new)
            for tp in new:
                self._stats.paused_by[self._labels[tp]] += 1

    def _maybe_commit(self) -> None:
        now = time.monotonic()
        if (
            self._since_commit >= self._settings.commit_every
            or now - self._last_commit >= self._settings.commit_interval
        ):
            self._commit(sync=False)

    def _commit(self, *, sync: bool, only: Iterable[TopicPartition] | None = None) -> bool:
        self._last_commit = time.monotonic()
        self._since_commit = 0
        # A synchronous commit re-asserts every position, which also repairs an earlier
        # asynchronous commit that failed without the tracker knowing.
        positions = self._tracker.positions() if sync else self._tracker.dirty_positions()
        if only is not None:
            keep = set(only)
            positions = {tp: pos for tp, pos in positions.items() if tp in keep}
        if not positions:
            return True
        try:
            self._timed_commit(positions, sync=sync)
            if failpoints.ACTIVE:
                failpoints.hit("after_commit")
        except MemberFenced:
            if self._closing:
                return False
            raise
        except BrokerError as exc:
            log.warning(
                "group %s: commit failed (%s); records after the last committed offsets will be "
                "redelivered if these partitions move",
                self.group,
                exc,
            )
            return False
        self._tracker.mark_committed(positions)
        return True

    def _timed_commit(self, positions: dict[TopicPartition, int], *, sync: bool) -> None:
        started = time.monotonic()
        try:
            self._backend.commit(positions, sync=sync)
        except BrokerError:
            self.commit_failures[(self.group,)] += 1
            raise
        finally:
            mode = "sync" if sync else "async"
            latency = self.commit_latency.get(mode)
            if latency is None:
                latency = self.commit_latency[mode] = Latency(COMMIT_BUCKETS)
            latency.add(time.monotonic() - started)

    def _take_sample(self, now: float) -> None:
        """Publish what health and gauges need, twice a second (poll thread, off the hot path).

        A partition with work waits since its position last moved (or since the work
        arrived after idling); halted partitions wait on purpose and are not counted.
        """
        self._next_sample = now + _SAMPLE_INTERVAL
        if self._metrics and now >= self._next_lag:
            self._next_lag = now + _LAG_INTERVAL
            self._sample_lag()
        parts: dict[TopicPartition, PartitionSample] = {}
        tracker_parts = self._tracker.parts
        for tp in self._assigned:
            part = tracker_parts.get(tp)
            if part is None:
                continue
            in_flight = part.in_flight
            halted = tp in self._halted
            waiting = 0.0
            if in_flight and not halted:
                seen = self._position_at.get(tp)
                waiting = seen[1] if seen is not None else now
            elif tp in self._unfetched_told:  # records it owns, none fetched for a while
                waiting = now - (time.monotonic() - self._unfetched_since[tp][1])
            parts[tp] = PartitionSample(
                in_flight, part.bytes, tp in self._paused, halted, waiting, self._lags.get(tp)
            )
        connected = self._connected and getattr(self._backend, "connected", True)
        self.sample = GroupSample(now, connected, parts)

    def _sample_lag(self) -> None:
        lag_of = getattr(self._backend, "lag", None)
        if lag_of is None or not self._assigned:
            return
        positions: dict[TopicPartition, int | None] = {}
        for tp in self._assigned:
            part = self._tracker.parts.get(tp)
            if part is not None:
                positions[tp] = part.committed if part.committed is not None else part.position
        try:
            self._lags = lag_of(positions)
        except BrokerError as exc:
            log.debug("group %s: sampling lag failed: %s", self.group, exc)

    def _in_flight_unhalted(self) -> int:
        halted = sum(
            self._tracker.parts[tp].in_flight for tp in self._halted if tp in self._tracker.parts
        )
        return self._tracker.in_flight_records - halted

    def _check_unfetched(self) -> None:
        """Find partitions this member owns but does not fetch, say so once, and resume them.

        librdkafka keeps a pause through a revoke and a reassignment (the backend resumes on
        assignment for that); whatever else leaves a partition paused or stuck, a member
        must not sit idle, and healthy, next to records it owns.
        """
        now = time.monotonic()
        self._next_unfetched = now + _UNFETCHED_INTERVAL
        assert self._unfetched_of is not None
        parts = self._tracker.parts
        candidates = [
            tp
            for tp in self._assigned
            if tp not in self._paused
            and tp not in self._halted
            and (tp not in parts or parts[tp].in_flight == 0)
        ]
        found = self._unfetched_of(candidates) if self._connected and candidates else {}
        for tp in list(self._unfetched_since):
            if tp not in found or found[tp][0] != self._unfetched_since[tp][0]:
                del self._unfetched_since[tp]  # fetched meanwhile: the position moved
                self._unfetched_told.discard(tp)
        stuck = []
        for tp, (position, count) in found.items():
            since = self._unfetched_since.setdefault(tp, (position, now))[1]
            if now - since >= UNFETCHED_AFTER and tp not in self._unfetched_told:
                self._unfetched_told.add(tp)
                stuck.append(tp)
                log.warning(
                    "group %s: %s[%d] has %d record(s) past its position %d that were not "
                    "fetched for %.0fs although it is not paused for back-pressure; resuming it",
                    self.group, tp.topic, tp.partition, count, position, now - since,
                )  # fmt: skip
        if stuck:
            self._backend.resume(stuck)
        if found:
            self.idle_since = None  # records it owns are waiting: not caught up

    def _check_idle(self) -> None:
        """Idle means caught up: assignment settled, nothing in flight, everything committed."""
        self._apply_completions()
        if not self._backend.settled or self._in_flight_unhalted() > 0 or self._unfetched_since:
            self.idle_since = None
            return
        if self._tracker.dirty_positions() and not self._commit(sync=True):
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = time.monotonic()

    # -- rebalance callbacks (poll thread, inside poll_batch) ------------------------------------

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        self._count_rebalance("assigned", tps)
        for tp in tps:
            self._labels[tp] = (self.group, tp.topic, str(tp.partition), self._specs[tp.topic].name)
            self._assigned[tp] = self._tracker.assign(tp)
            self._leases[tp] = self._backend.lease_of(tp)
            self._paused.discard(tp)  # pause state never survives reassignment (C7)
            self._halted.discard(tp)
        if self._crashes is not None and tps:
            found = self._crashes.load(tps)
            for tp, suspects in found.items():
                log.warning(
                    "group %s: the previous owner of %s[%d] may have died handling offsets "
                    "%d..%d; handling %s, counting crashes (crash_limit=%d)",
                    self.group, tp.topic, tp.partition, suspects.low, suspects.high,
                    _plan_of(suspects), self._crashes.limit,
                )  # fmt: skip
            self._suspects.update(found)
        self.idle_since = None
        if tps:
            log.info("group %s: assigned %s", self.group, _fmt(tps))

    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        """Drain then fence: finished work is committed, unfinished work is redelivered."""
        tps = [tp for tp in tps if tp in self._assigned]
        if not tps:
            return
        self._count_rebalance("revoked", tps)
        if self._closing:  # _shutdown quiesced every lane already
            drained = not self.timed_out
        else:
            drained = self._quiesce(tps, self._settings.revoke_timeout)
        self._apply_completions()
        if failpoints.ACTIVE:
            failpoints.hit("in_revoke")
        if self._commit(sync=True, only=tps) and drained:
            self._clear_polled(tps)
        self._forget(tps)
        log.info("group %s: revoked %s", self.group, _fmt(tps))

    def _clear_polled(self, tps: list[TopicPartition]) -> None:
        """After a graceful revoke or stop, nothing polled from ``tps`` is a crash suspect.

        Every handler finished (or the quiesce would have timed out): the records still
        unfinished were never started, so the next owner handles them at full speed instead
        of one at a time. Without this, every rebalance of a busy partition made its new
        owner probe up to ``max_in_flight`` records serially.
        """
        if self._crashes is not None:
            self._crashes.clear(tps)

    def _on_lost(self, tps: list[TopicPartition]) -> None:
        """Someone else may own these already: stop them and commit nothing."""
        tps = [tp for tp in tps if tp in self._assigned]
        self._count_rebalance("lost", tps)
        if not self._closing:
            self._quiesce(tps, 0.0)
        self._forget(tps)
        log.warning(
            "group %s: lost %s without a revoke; their uncommitted records will be redelivered",
            self.group,
            _fmt(tps),
        )

    def _count_rebalance(self, event: str, tps: list[TopicPartition]) -> None:
        if tps:
            self.rebalances[(self.group, event)] += 1
            self.ownership_changes[(self.group, event)] += len(tps)

    def _forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._tracker.revoke(tp)
            self._assigned.pop(tp, None)
            self._leases.pop(tp, None)
            self._paused.discard(tp)
            self._halted.discard(tp)
            self._suspects.pop(tp, None)
            self._position_at.pop(tp, None)
            self._lags.pop(tp, None)
            self._unfetched_since.pop(tp, None)
            self._unfetched_told.discard(tp)

    def _quiesce(self, tps: list[TopicPartition] | None, timeout: float) -> bool:
        """Stop the lanes of ``tps`` (all if None) and wait for their running unit.

        On timeout the lanes are cancelled: async handlers get CancelledError and report the
        records they finished, so only the unfinished ones are redelivered. A sync handler
        that hangs blocks the loop itself; its records simply stay uncommitted.
        """
        if self._loop.is_closed():
            return False
        # Flag the lanes from this thread first. The loop may be inside a sync handler's
        # slice for longer than ``timeout``; cancelling _stop_lanes before it ever ran would
        # leave the lanes going, handling records of partitions another member owns now
        # (seen on Kafka: a fenced member went on for a second). A flagged lane starts no
        # new slice or unit.
        wanted = None if tps is None else set(tps)
        for key, lane in list(self._lanes.items()):  # one C-level copy: safe across threads
            if wanted is None or key[0] in wanted:
                lane.stopped = True
        finished = threading.Event()
        fut = asyncio.run_coroutine_threadsafe(self._stop_lanes(tps, finished), self._loop)
        if finished.wait(timeout):
            return True
        fut.cancel()
        finished.wait(_CANCEL_GRACE)
        if timeout > 0:
            log.warning(
                "group %s: handlers still running after %.1fs were cancelled; their records "
                "were not committed and will be redelivered",
                self.group,
                timeout,
            )
        return False

    def _shutdown(self) -> None:
        self._closing = True
        if isinstance(self.error, MemberFenced):
            # Another member owns these partitions now: stop at once, commit nothing.
            self._quiesce(None, 0.0)
            self._forget(list(self._assigned))
        elif not self._quiesce(None, self._settings.shutdown_timeout):
            self.timed_out = True
        self._apply_completions()
        if self._commit(sync=True) and not self.timed_out:
            self._clear_polled(list(self._assigned))
        try:
            self._backend.close()
        except BrokerError as exc:
            log.warning("group %s: leaving the group failed: %s", self.group, exc)

    # -- the event loop thread -------------------------------------------------------------------

    def _enqueue(self, units: list[Unit]) -> None:
        lanes = self._lanes
        for key, epoch, spec, lease, msgs in units:
            lane = lanes.get(key)
            if lane is None or lane.epoch != epoch:
                tp = key[0]
                labels = (self.group, tp.topic, str(tp.partition), spec.name)
                lane = lanes[key] = Lane(key, epoch, spec, lease, labels)
            if lane.stopped or lane.halted:
                continue
            lane.pending.append(msgs)
            if lane.task is None:
                lane.task = self._loop.create_task(self._run_lane(lane))

    async def _stop_lanes(
        self, tps: list[TopicPartition] | None, finished: threading.Event
    ) -> None:
        wanted = None if tps is None else set(tps)
        tasks = []
        for key, lane in list(self._lanes.items()):
            if wanted is None or key[0] in wanted:
                lane.stop()
                del self._lanes[key]
                if lane.task is not None:
                    tasks.append(lane.task)
        try:
            if tasks:
                await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
        finally:
            finished.set()

    async def _run_lane(self, lane: Lane) -> None:
        spec = lane.spec
        limit = spec.max_batch
        crashes, tp = self._crashes, lane.key[0]
        try:
            while lane.pending and not lane.stopped:
                unit = lane.take(limit)
                kind = type(unit)
                marked = -1
                if kind is Chunk and crashes is not None:  # before any of its handlers starts
                    marked = unit[0].offset
                    crashes.mark(tp, marked, unit[-1].offset)
                if spec.dedup is not None:
                    unit = self._skip_seen(lane, unit)
                    if not unit:
                        if marked >= 0 and crashes is not None:
                            crashes.unmark(tp, marked)
                        continue
                lane.dead_lettered = lane.progress = lane.reported = 0
                lane.timed_at = time.monotonic()
                try:
                    if kind is Probe:
                        done = await self._run_probe(lane, unit)  # type: ignore[arg-type]
                    else:
                        done = await self._run_unit(lane, unit)
                except asyncio.CancelledError:
                    self._report(lane, unit, lane.progress)  # keep what finished
                    raise
                if done > lane.dead_lettered:
                    self._stats.handled_by[lane.labels] += done - lane.dead_lettered
                # Commit-before units report too: the tracker counts in-flight work for both.
                halted = done < len(unit) and not lane.stopped
                self._report(lane, unit, done, halted)
                if marked >= 0 and crashes is not None and done == len(unit):
                    crashes.unmark(tp, marked)
                lane.seq_base += len(unit)
                if done < len(unit):
                    lane.halted = halted
                    break
        finally:
            lane.task = None

    async def _run_unit(self, lane: Lane, unit: list[Message]) -> int:
        spec = lane.spec
        if spec.batch:
            return await self._run_batch(lane, unit)
        executor = spec.executor
        if executor is Executor.INLINE:
            return await self._run_sync(lane, unit)
        if executor is Executor.ASYNCIO:
            return await self._run_async(lane, unit)
        return await self._run_pooled(lane, unit)

    async def _run_probe(self, lane: Lane, unit: Probe) -> int:
        """Handle one suspect alone, charged to the crash counter while its handler runs."""
        crashes = self._crashes
        assert crashes is not None
        tp, msg = lane.key[0], unit[0]
        async with self._probe_lock:
            if lane.stopped:
                return 0
            if unit.starts >= crashes.limit:
                self._stats.failed_by[lane.labels] += 1
                lost = WorkerLost(
                    f"the worker died {unit.starts} times while handling this record alone "
                    f"(crash_limit={crashes.limit}), after dying in the range it was part of",
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                )
                done = 1 if await self._dead_letter(lane, msg, lost, 0) else 0
            else:
                crashes.begin(tp, msg.offset, unit.starts + 1)
                done = await self._run_unit(lane, unit)
            if done:
                crashes.end(tp, msg.offset)
            return done

    def _skip_seen(self, lane: Lane, unit: list[Message]) -> list[Message]:
        """One dedup check per unit: records already marked are done without a handler."""
        spec = lane.spec
        assert spec.dedup is not None
        keys = _dedup_keys(spec, unit)
        flags = spec.dedup.seen(keys)
        # A business key twice in one unit: the later copy is a duplicate of the earlier one,
        # whose mark lands only after it is handled. The commit cannot pass the later copy
        # before the earlier one is done, since it sits at a higher offset.
        earlier: set[str] = set()
        for i, k in enumerate(keys):
            if k in earlier:
                flags[i] = True
            elif not flags[i]:
                earlier.add(k)
        if not any(flags):
            return unit
        skipped = [m for m, seen in zip(unit, flags, strict=True) if seen]
        self._completions.append((lane.key[0], lane.epoch, skipped, False))
        self._stats.deduplicated_by[lane.labels] += len(skipped)
        return [m for m, seen in zip(unit, flags, strict=True) if not seen]

    def _report(self, lane: Lane, unit: list[Message], upto: int, halted: bool = False) -> None:
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
                store.mark(_dedup_keys(lane.spec, done))
                if failpoints.ACTIVE:
                    failpoints.hit("after_mark")
            self._completions.append((lane.key[0], lane.epoch, done, halted))
            lane.reported = upto
            if self._metrics and done:
                self._time(lane, done)

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

    async def _run_sync(self, lane: Lane, unit: list[Message]) -> int:
        """Run inline, yielding the loop whenever this lane held it for ``INLINE_HOLD``.

        Inline handlers share the event loop. Without the yield one lane would hold it for a
        whole fetch, and a revoke could not stop it within ``revoke_timeout``: the old owner
        would go on handling records that the new owner handles too.
        """
        invoke = lane.spec.invoke
        lease = lane.lease
        marks = lane.spec.dedup is not None
        clock = time.monotonic
        n = len(unit)
        i = 0
        failed: list[BaseException] = []
        while i < n:
            end = min(i + INLINE_SLICE, n)
            if lease is None:
                i = call_each(invoke, unit, i, end, failed)
            else:  # ownership can lapse silently: check it before every handler
                i = call_each_until(invoke, unit, i, end, failed, lease)
                if not failed and i < end:
                    self._finished(lane, unit, i, marks)
                    if not await self._await_lease(lane):
                        return i
            if failed:
                self._finished(lane, unit, i, marks)
                if not await self._recover(lane, unit[i], failed.pop(), i):
                    return i
                i += 1
            lane.progress = i
            if marks:  # a crash re-handles at most one slice that the store did not see
                self._report(lane, unit, i)
            now = clock()
            if now - lane.yielded_at >= INLINE_HOLD:
                self._report(lane, unit, i)
                await asyncio.sleep(0)
                lane.yielded_at = lane.timed_at = clock()
                if lane.stopped:
                    return i
        return n

    def _finished(self, lane: Lane, unit: list[Message], upto: int, marks: bool) -> None:
        """Mark what a lane finished before it awaits mid-unit (a retry, a DLQ write, a lease).

        Other lanes run meanwhile, and a crash there must not re-handle records the store
        could have known (seen on Kafka: a slice handled just before a poison record ran
        again after a crash in another lane during its dead-lettering).
        """
        lane.progress = upto
        if marks:
            self._report(lane, unit, upto)

    async def _run_async(self, lane: Lane, unit: list[Message]) -> int:
        invoke = lane.spec.invoke
        lease = lane.lease
        for i, msg in enumerate(unit):
            if lane.stopped:
                return i
            expired = lease is not None and time.monotonic() >= lease.deadline
            if expired and not await self._await_lease(lane):
                return i
            try:
                await invoke(msg)
            except BaseException as exc:
                if not await self._recover(lane, msg, exc, i):
                    return i
            lane.progress = i + 1
            if not lane.progress % INLINE_SLICE:
                self._report(lane, unit, lane.progress)
        return len(unit)

    async def _await_lease(self, lane: Lane) -> bool:
        """Past the lease deadline: start nothing until it is renewed or the lane stops.

        A member that was frozen (SIGSTOP, a long GC pause) wakes up past its deadline; its
        poll thread then finds the lease gone and stops the lane, and meanwhile no handler
        starts for a partition that may already belong to someone else.
        """
        lease = lane.lease
        # The poll thread moves the deadline; polling it is the point, not an oversight.
        while lease is not None and not lane.stopped and time.monotonic() >= lease.deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return not lane.stopped

    async def _call(self, spec: HandlerSpec, arg: Any) -> None:
        """One call of the handler (a retry, a batch), wherever its executor runs it."""
        executor = spec.executor
        if executor is Executor.INLINE:
            spec.invoke(arg)
        elif executor is Executor.ASYNCIO:
            await spec.invoke(arg)
        elif executor is Executor.THREADS:
            await self._loop.run_in_executor(self._pools.threads(), spec.invoke, arg)
        else:
            _, exc = await self._in_process(spec, arg if spec.batch else [arg])
            if exc is not None:
                raise exc

    async def _run_pooled(self, lane: Lane, unit: list[Message]) -> int:
        """Hand the unit to the thread or process pool one chunk at a time, in order.

        The lane waits for each chunk, so its records never overlap; other lanes' chunks run
        in the pool meanwhile. A revoke or stop waits for at most the running chunk.
        """
        spec = lane.spec
        lease = lane.lease
        threads = spec.executor is Executor.THREADS
        chunk = POOL_CHUNK_THREADS if threads else POOL_CHUNK_PROCESSES
        if spec.timeout is not None:
            chunk = 1  # a timeout is per record: the one that ran past it is known
        n = len(unit)
        i = 0
        alone_until = 0  # after a pool process died: one record per call, to find the killer
        while i < n:
            expired = lease is not None and time.monotonic() >= lease.deadline
            if expired and not await self._await_lease(lane):
                return i
            end = min(i + (1 if i < alone_until else chunk), n)
            exc: BaseException | None = None
            if threads:
                failed: list[BaseException] = []
                i = await self._loop.run_in_executor(
                    self._pools.threads(), call_each_leased, spec.invoke, unit, i, end, failed,
                    lease,
                )  # fmt: skip
                exc = failed[0] if failed else None
            else:
                done, exc = await self._in_process(spec, unit[i:end])
                i += done
                if isinstance(exc, PoolProcessDied) and end - i > 1:
                    # Which record of the chunk killed it is unknown: charge none, and take
                    # the rest of the chunk one record at a time (those that ran before the
                    # death run again: at-least-once).
                    alone_until = end
                    continue
            if exc is not None:
                self._finished(lane, unit, i, lane.spec.dedup is not None)
                if not await self._recover(lane, unit[i], exc, i):
                    return i
                i += 1
            lane.progress = i
            self._report(lane, unit, i)
            if lane.stopped:
                return i
        return n

    async def _in_process(
        self, spec: HandlerSpec, records: list[Message]
    ) -> tuple[int, BaseException | None]:
        pool = self._pools.processes()
        marker = deadline_marker() if spec.timeout is not None else None
        try:
            done, exc = await self._loop.run_in_executor(
                pool, process_chunk, spec.fn, spec.batch, records, spec.timeout, marker
            )
        except BrokenProcessPool as broken:
            self._pools.replace_broken_processes(pool)
            stack = read_deadline_marker(marker)
            if stack:  # the process's own deadline ended it: the handler ran past the timeout
                msg = records[0]
                log.warning(
                    "handler %s ran past timeout=%ss on %s[%d]@%d: its pool process was "
                    "killed; it was at:\n%s",
                    spec.name, spec.timeout, msg.topic, msg.partition, msg.offset, stack,
                    extra=about(spec.name, msg, self.group),
                )  # fmt: skip
                return 0, TimeoutError(
                    f"handler ran past timeout={spec.timeout}s; its pool process was killed"
                )
            return 0, PoolProcessDied(f"a process of the handler pool died: {broken}")
        finally:
            read_deadline_marker(marker, remove=True)
        return int(done), exc

    async def _recover(self, lane: Lane, msg: Message, exc: BaseException, index: int) -> bool:
        """Retry ``msg`` (``unit[index]``) in place, then dead-letter it.

        Returns False when the lane must halt at this record.
        """
        spec = lane.spec
        self._stats.failed_by[lane.labels] += 1
        if self._is_critical(lane, msg, exc):
            return False
        if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
            return await self._dead_letter(lane, msg, exc, index)
        policy = spec.retry
        for retry in range(1, policy.max_retries + 1):
            delay = policy.delay(retry)
            log.warning(
                "handler %s failed on %s[%d]@%d (attempt %d of %d): %s: %s; retrying in %.2fs",
                spec.name, msg.topic, msg.partition, msg.offset, msg.attempt,
                policy.max_retries + 1, type(exc).__name__, exc, delay,
                extra=about(spec.name, msg, self.group),
            )  # fmt: skip
            if not await self._sleep(lane, delay) or not await self._await_lease(lane):
                return False
            self._stats.retried_by[lane.labels] += 1
            msg.attempt = retry + 1
            try:
                await self._call(spec, msg)
                return True
            except BaseException as again:
                exc = again
                self._stats.failed_by[lane.labels] += 1
                if self._is_critical(lane, msg, exc):
                    return False
                if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
                    break
        return await self._dead_letter(lane, msg, exc, index)

    async def _run_batch(self, lane: Lane, unit: list[Message]) -> int:
        """Retry the whole batch; then try each member alone once and dead-letter the failures."""
        spec = lane.spec
        policy = spec.retry
        for attempt in range(1, policy.max_retries + 2):
            if attempt > 1:
                if not await self._sleep(lane, policy.delay(attempt - 1)):
                    return 0
                self._stats.retried_by[lane.labels] += len(unit)
                for m in unit:
                    m.attempt = attempt
            if not await self._await_lease(lane):
                return 0
            try:
                await self._call(spec, unit)
                return len(unit)
            except BaseException as exc:
                self._stats.failed_by[lane.labels] += 1
                if self._is_critical(lane, unit[0], exc):
                    return 0
                log.warning(
                    "batch handler %s failed on %d records of %s[%d] from offset %d "
                    "(attempt %d of %d): %s: %s",
                    spec.name, len(unit), unit[0].topic, unit[0].partition, unit[0].offset,
                    attempt, policy.max_retries + 1, type(exc).__name__, exc,
                    extra=about(spec.name, unit[0], self.group),
                )  # fmt: skip
                if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
                    break
        for i, msg in enumerate(unit):
            if not await self._await_lease(lane):
                return i
            try:
                await self._call(spec, [msg])
            except BaseException as exc:
                if self._is_critical(lane, msg, exc) or not await self._dead_letter(
                    lane, msg, exc, i
                ):
                    return i
        return len(unit)

    def _is_critical(self, lane: Lane, msg: Message, exc: BaseException) -> bool:
        """Process-critical errors are never poison: halt uncommitted and stop the worker."""
        if not isinstance(exc, NEVER_POISON):
            return False
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise exc  # our own cancellation (forced shutdown): let it unwind the lane
        log.critical(
            "handler %s raised %s on %s[%d]@%d: not dead-lettering a process-critical error; "
            "the partition stops uncommitted, the worker stops, and the record will be "
            "redelivered on restart",
            lane.spec.name, type(exc).__name__, msg.topic, msg.partition, msg.offset,
            extra=about(lane.spec.name, msg, self.group),
        )  # fmt: skip
        self._on_critical(exc)
        return True

    async def _dead_letter(self, lane: Lane, msg: Message, exc: BaseException, index: int) -> bool:
        """Produce the DLQ copy and wait for its ack; only then may the commit pass it."""
        spec = lane.spec
        seq = lane.seq_base + index
        run = lane.dead_run + 1 if seq == lane.last_dead + 1 else 1
        if spec.dlq_limit is not None and run > spec.dlq_limit:
            log.error(
                "handler %s: %d records of %s[%d] in a row went to the DLQ (dlq_limit=%d); "
                "halting the partition at offset %d instead of dead-lettering more, which "
                "looks like a bad deploy rather than bad data",
                spec.name, run - 1, msg.topic, msg.partition, spec.dlq_limit, msg.offset,
                extra=about(spec.name, msg, self.group),
            )  # fmt: skip
            return False
        if spec.dlq_topic is None:
            log.error(
                "handler %s gave up on %s[%d]@%d (%s: %s) and dlq=False: partition %d halts "
                "here uncommitted until the worker restarts",
                spec.name, msg.topic, msg.partition, msg.offset, type(exc).__name__, exc,
                msg.partition, extra=about(spec.name, msg, self.group),
            )  # fmt: skip
            return False
        key, value, headers = dead_letter_record(
            msg,
            exc,
            group=self.group,
            handler=spec.name,
            traceback_limit=self._settings.traceback_limit,
        )
        delay = 0.1
        while True:
            try:
                if self._tracer is None:
                    fut = self._producer.send(spec.dlq_topic, value, key, headers)
                else:
                    fut = self._traced_send(spec.dlq_topic, msg, key, value, headers)
                await asyncio.wrap_future(fut)
                if failpoints.ACTIVE:
                    failpoints.hit("after_dlq")
                break
            except Exception as dlq_exc:
                log.warning(  # not about(): a DLQ outage repeats this, so it is rate-limited
                    "DLQ write to %s for %s[%d]@%d failed (%s); the partition waits and "
                    "retries in %.1fs",
                    spec.dlq_topic, msg.topic, msg.partition, msg.offset, dlq_exc, delay,
                )  # fmt: skip
                if not await self._sleep(lane, delay):
                    return False
                delay = min(delay * 2, 30.0)
        self._stats.dead_lettered_by[lane.labels] += 1
        lane.dead_lettered += 1
        lane.last_dead, lane.dead_run = seq, run
        level = logging.INFO if isinstance(exc, Reject) else logging.WARNING
        log.log(
            level,
            "handler %s: dead-lettered %s[%d]@%d to %s after %d attempt(s): %s: %s",
            spec.name, msg.topic, msg.partition, msg.offset, spec.dlq_topic, msg.attempt,
            type(exc).__name__, exc, extra=about(spec.name, msg, self.group),
        )  # fmt: skip
        return True

    def _traced_send(
        self, topic: str, msg: Message, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Future[Any]:
        """The DLQ write as a span in the record's trace (``streamq.tracing``)."""
        tracer = self._tracer
        assert tracer is not None
        return tracer.publish(  # type: ignore[no-any-return]
            topic,
            headers,
            lambda traced: self._producer.send(topic, value, key, traced),
            parent=tracer.context_of(msg.raw_headers),
        )

    async def _sleep(self, lane: Lane, delay: float) -> bool:
        """Back off without blocking other lanes; False if the lane was stopped meanwhile."""
        if delay > 0 and not lane.stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.wake.wait(), delay)
        return not lane.stopped


def _dedup_keys(spec: HandlerSpec, unit: list[Message]) -> list[str]:
    key = spec.dedup_key
    if key is coordinates:
        return coordinate_keys(unit)  # the default, built in one C loop
    return [key(m) for m in unit]


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "nothing"
