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

The rooms: ``GroupRunner`` here is the poll side (the poll loop, unit planning, rebalance
callbacks, samples for health) and composes the rest: ``flow`` (pause, resume, caps, fetch
health), ``committer`` (the commit policy), ``loop`` (lanes on the event loop),
``executors`` (one class per ``Executor``), ``outcome`` (retry, batch fallback, critical
errors, dead-lettering) and ``lanes`` (the typed hand-offs between them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from .. import failpoints
from ..brokers.base import Backend, Broker, Lease, ProducerBackend
from ..crashes import CHUNK, CrashCounter, Suspects
from ..dispatch import Dispatcher
from ..errors import BrokerError, ConfigError, MemberFenced
from ..handlers import CommitMode, HandlerSpec, Ordering
from ..logs import get_logger, partitions_text
from ..message import Message, TopicPartition
from ..offsets import OffsetTracker
from ..settings import Settings
from ..stats import GroupSample, Labels, PartitionSample, Stats
from ..tracing import tracer
from .collector import poll_uncollected
from .committer import Committer
from .executors import executors
from .flow import DRAIN_POLL, FlowControl
from .lanes import ALL_KEYS, Chunk, Completion, Probe, Reporter, Unit
from .loop import Lanes
from .outbox import outbox_for
from .outcome import Outcomes
from .pools import Pools
from .share import consumer_for, halt_share_member, lone_runs_allowed, redelivered_units

__all__ = ["GroupRunner"]

log = get_logger("streamq.worker")

# Seconds between the poll thread's samples (health, gauges) and lag samples (Redis: XINFO).
_SAMPLE_INTERVAL = 0.5
_LAG_INTERVAL = 2.0


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self._clock = clock  # monotonic seconds: idle time, commit and flow timers
        self._tracer = tracer() if settings.tracing else None
        if self._tracer is not None:
            specs = {topic: self._tracer.traced(spec) for topic, spec in specs.items()}
        self._specs = specs
        self._settings = settings
        self._backend: Backend = backend or consumer_for(broker, group, settings, specs)
        self._share = self._backend.share  # memory:// and replay run share handlers classic
        self._loop = loop
        self._stats = stats
        self._dispatcher = Dispatcher()
        self._tracker = OffsetTracker()
        self._crashes = crashes
        self._suspects: dict[TopicPartition, Suspects] = {}  # poll thread
        # The rooms: the committer and this poll side share the tracker (poll thread only).
        self._outbox = outbox_for(
            group, specs, self._backend, producer, self._tracker, settings, broker
        )
        self._committer = Committer(
            group,
            self._backend,
            self._tracker,
            every=settings.commit_every,
            caught_up_every=self._backend.commit_records_cap,
            share=self._share,
            interval=settings.commit_interval,
            clock=clock,
            outbox=self._outbox,
            sync_wait=min(settings.revoke_timeout, settings.shutdown_timeout),
        )
        self._completions: deque[Completion] = deque()
        reporter = Reporter(self._completions, metrics=metrics, round=self._backend.round)
        outcomes = Outcomes(
            group, producer, stats, on_critical, self._tracer, settings, self._backend
        )  # fmt: skip
        pools = pools or Pools.for_specs(settings.threads, settings.processes, specs.values())
        self._lanes = Lanes(
            group,
            loop,
            stats,
            executors(group, outcomes, reporter, loop, pools),
            outcomes,
            reporter,
            crashes,
            probe_lock or asyncio.Lock(),
            self._outbox,
            lone_runs_allowed(settings),
            settings.key_lanes,
        )
        # poll-thread state
        self._assigned: dict[TopicPartition, int] = {}
        self._leases: dict[TopicPartition, Lease | None] = {}
        self._closing = False
        self._labels: dict[TopicPartition, Labels] = {}
        self._flow = FlowControl(
            group, self._backend, self._tracker, settings, stats, self._labels, clock
        )
        # progress: the position each partition last reached, and when (wall time)
        self._position_at: dict[TopicPartition, tuple[int | None, float]] = {}
        self._connected = True
        self._lags: dict[TopicPartition, int] = {}
        self._next_sample = 0.0
        self._next_lag = 0.0
        # metrics (streamq.metrics.Exporter reads these from its own thread: RunnerView)
        self._metrics = metrics
        self.last_poll = 0.0
        self.sample: GroupSample | None = None
        self.handler_latency = reporter.handler_latency
        self.e2e_latency = reporter.e2e_latency
        self.commit_latency = self._committer.commit_latency
        self.commit_failures = self._committer.commit_failures
        self.rebalances: Counter[tuple[str, str]] = Counter()
        self.ownership_changes: Counter[tuple[str, str]] = Counter()
        # backend events (Redis: streams reset, entries lost to trims), if it counts any
        self.backend_events: Counter[tuple[str, str, str]] = self._backend.events
        # shared
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
        return sorted(self._flow.halted_in_run)

    # -- the poll thread -----------------------------------------------------------------------

    def _poll_main(self) -> None:
        settings = self._settings
        failures = 0
        backlog = False  # the last poll brought many records: commit in large steps
        try:
            self._backend.subscribe(
                list(self._specs), self._on_assign, self._on_revoke, self._on_lost
            )
            while not self._stop.is_set():
                self.last_poll = now = time.time()
                if self._metrics and now >= self._next_sample:
                    self._take_sample(now)
                self._apply_completions()
                self._committer.maybe_commit(backlog)
                if self._outbox is not None:
                    self._flow.hold(self._outbox.refused)
                if self._flow.unfetched_due() and self._flow.check_unfetched(
                    self._assigned, self._connected
                ):
                    self.idle_since = None  # records it owns are waiting: not caught up
                wait = settings.poll_timeout
                if self._flow.draining():
                    wait = min(wait, DRAIN_POLL)
                try:
                    batch = poll_uncollected(
                        self._backend.poll_batch, settings.max_poll_records, wait
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
                # half full or more: records are waiting (Redis splits a poll among streams)
                backlog = 2 * len(batch) >= settings.max_poll_records
                # async commits that failed (Kafka), served in that poll: marked committed
                failed = self._backend.take_failed_commits()
                if failed:
                    self._tracker.mark_uncommitted(failed)
                if batch:
                    self.idle_since = None
                    if failpoints.ACTIVE:
                        failpoints.hit("after_poll")
                    self._dispatch(batch)
                else:
                    self._check_idle()
        except (BrokerError, ConfigError) as exc:  # said clearly: no traceback
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
                if not self._committer.commit_before(tp, epoch, msgs):
                    continue
            elif crashes is not None:
                low = part.position  # the first unfinished offset; may be 0
                # records, not offsets: Redis offsets jump by 2**20 at each millisecond
                polled[tp] = (msgs[0].offset if low is None else low, msgs[-1].offset, part.held)
            lease = self._leases.get(tp)
            suspects = self._suspects.get(tp) if self._suspects else None
            if suspects is not None:
                self._add_with_suspects(units, tp, epoch, spec, lease, msgs, suspects)
            elif spec.ordering is Ordering.KEY and not spec.merges_keys:
                for lane, sub in self._dispatcher.split_keys(msgs, lanes).items():
                    units.append(Unit((tp, lane), epoch, spec, lease, sub))
            elif self._share and self._backend.redelivered:
                units += [Unit((tp, 0), epoch, spec, lease, u) for u in redelivered_units(msgs)]
            else:  # the partition's lane (all its keys' lane, when the handler merges them)
                lane = ALL_KEYS if spec.merges_keys else 0
                units.append(Unit((tp, lane), epoch, spec, lease, msgs))
            if (
                part.in_flight >= self._settings.max_in_flight
                or part.bytes >= self._settings.max_in_flight_bytes
            ):
                self._flow.pause([tp])
        if self._flow.over_worker_cap(1.0):
            self._flow.pause(list(self._assigned))
        if polled and crashes is not None:
            crashes.note_polled(polled)  # before any handler can start on these records
        if units:
            self._loop.call_soon_threadsafe(self._lanes.enqueue, units)

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
                units.append(Unit((tp, lane), epoch, spec, lease, Probe(msg, count or 0)))
                continue
            wrap = Chunk if kind == "chunk" else list
            if key_lanes:
                for lane, sub in split_keys(run, key_lanes).items():
                    units.append(Unit((tp, lane), epoch, spec, lease, wrap(sub)))
            else:
                units.append(Unit((tp, 0), epoch, spec, lease, wrap(run)))
        if msgs[-1].offset >= suspects.last:
            del self._suspects[tp]  # past every suspect: back to normal units
            log.info(
                "group %s: %s[%d] is past what its previous owner left: %d records in chunks, "
                "%d alone",
                self.group, tp.topic, tp.partition, suspects.in_chunks, suspects.alone,
            )  # fmt: skip

    def _apply_completions(self) -> None:
        progress = self._position_at if self._metrics else None
        for tp in self._committer.apply(self._completions, progress):
            self._flow.halt(tp)
            if self._share:  # its rounds would wait for the halted record forever
                halt_share_member(self.group, tp, self._stop)
        if self._flow.paused:
            self._flow.resume_drained()

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
        flow = self._flow
        for tp in self._assigned:
            part = tracker_parts.get(tp)
            if part is None:
                continue
            in_flight = part.in_flight
            halted = tp in flow.halted
            waiting = 0.0
            if in_flight and not halted:
                seen = self._position_at.get(tp)
                waiting = seen[1] if seen is not None else now
            elif tp in flow.unfetched_told:  # records it owns, none fetched for a while
                waiting = now - (self._clock() - flow.unfetched_since[tp][1])
            parts[tp] = PartitionSample(
                in_flight, part.bytes, tp in flow.paused, halted, waiting, self._lags.get(tp)
            )
        connected = self._connected and self._backend.connected
        self.sample = GroupSample(now, connected, parts)

    def _sample_lag(self) -> None:
        if not self._assigned:
            return
        positions: dict[TopicPartition, int | None] = {}
        for tp in self._assigned:
            part = self._tracker.parts.get(tp)
            if part is not None:
                positions[tp] = part.committed if part.committed is not None else part.position
        try:
            self._lags = self._backend.lag(positions)
        except BrokerError as exc:
            log.debug("group %s: sampling lag failed: %s", self.group, exc)

    def _check_idle(self) -> None:
        """Idle means caught up: assignment settled, nothing in flight, everything committed."""
        self._apply_completions()
        if not self._backend.settled or self._flow.owes_work():
            self.idle_since = None
            return
        self._committer.step_over_markers(list(self._assigned))
        if self._tracker.dirty_positions() and not self._committer.commit(sync=True):
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = self._clock()

    # -- rebalance callbacks (poll thread, inside poll_batch) ------------------------------------

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        self._count_rebalance("assigned", tps)
        for tp in tps:
            self._labels[tp] = (self.group, tp.topic, str(tp.partition), self._specs[tp.topic].name)
            self._assigned[tp] = self._tracker.assign(tp)
            self._leases[tp] = self._backend.lease_of(tp)
            self._flow.assigned(tp)
        if self._crashes is not None and tps:
            found = self._crashes.load(tps)
            at = self._backend.offset_text
            for tp, suspects in found.items():
                log.warning(
                    "group %s: the previous owner of %s[%d] may have died handling offsets "
                    "%s..%s; handling %s, counting crashes (crash_limit=%d)",
                    self.group, tp.topic, tp.partition, at(suspects.low), at(suspects.high),
                    suspects.plan_text(at), self._crashes.limit,
                )  # fmt: skip
            self._suspects.update(found)
        self.idle_since = None
        if tps:
            log.info("group %s: assigned %s", self.group, partitions_text(tps))

    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        """Drain then fence: finished work is committed, unfinished work is redelivered."""
        tps = [tp for tp in tps if tp in self._assigned]
        if not tps:
            return
        self._count_rebalance("revoked", tps)
        if self._closing:  # _shutdown quiesced every lane already
            drained = not self.timed_out
        else:
            drained = self._lanes.quiesce(tps, self._settings.revoke_timeout)
        self._apply_completions()
        if failpoints.ACTIVE:
            failpoints.hit("in_revoke")
        if self._committer.commit(sync=True, only=tps) and drained:
            self._clear_polled(tps)
        self._forget(tps)
        log.info("group %s: revoked %s", self.group, partitions_text(tps))

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
            self._lanes.quiesce(tps, 0.0)
        self._forget(tps)
        log.warning(
            "group %s: lost %s without a revoke; their uncommitted records will be redelivered",
            self.group,
            partitions_text(tps),
        )

    def _count_rebalance(self, event: str, tps: list[TopicPartition]) -> None:
        if tps:
            self.rebalances[(self.group, event)] += 1
            self.ownership_changes[(self.group, event)] += len(tps)

    def _forget(self, tps: list[TopicPartition]) -> None:
        if self._outbox is not None:
            self._outbox.forget(tps)
        for tp in tps:
            self._tracker.revoke(tp)
            self._assigned.pop(tp, None)
            self._leases.pop(tp, None)
            self._flow.forget(tp)
            self._suspects.pop(tp, None)
            self._position_at.pop(tp, None)
            self._lags.pop(tp, None)

    def _shutdown(self) -> None:
        self._closing = self._committer.closing = True
        if isinstance(self.error, MemberFenced):
            # Another member owns these partitions now: stop at once, commit nothing.
            self._lanes.quiesce(None, 0.0)
            self._forget(list(self._assigned))
        elif not self._lanes.quiesce(None, self._settings.shutdown_timeout):
            self.timed_out = True
        self._apply_completions()
        if self._committer.commit(sync=True) and not self.timed_out:
            self._clear_polled(list(self._assigned))
        try:
            self._backend.close()
        except BrokerError as exc:
            log.warning("group %s: leaving the group failed: %s", self.group, exc)
