"""The event loop side of a group: a task per busy lane, each running its units in order.

Units arrive from the poll thread in one call per batch (``enqueue``). A lane runs one unit
at a time through the executor chosen when the lane was set up, with the dedup check before
and the crash probes around it, and reports what finished (``Reporter``). An idle lane of a
plain sync handler runs its unit right in that call (``_run_here``, ``_run_batch_here``) and
needs a task only for what cannot finish there. The poll thread stops lanes through
``quiesce``, the one call that crosses back into the loop.
"""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections.abc import Set

from ..crashes import CrashCounter
from ..dispatch import Dispatcher, Lease, call_each, call_each_until
from ..errors import WorkerLost
from ..handlers import CommitMode, Executor, HandlerSpec, Ordering
from ..logs import get_logger
from ..message import Message, TopicPartition
from ..stats import Stats
from .executors import INLINE_HOLD, INLINE_SLICE, LaneExecutor
from .lanes import (
    ALL_KEYS,
    UNORDERED_UNIT,
    UNORDERED_UNIT_INLINE,
    Chunk,
    Completion,
    Cost,
    FailedBatch,
    FirstCallFailed,
    Gapped,
    Lane,
    LaneKey,
    Probe,
    Reporter,
    Retrying,
    Unit,
    dedup_keys,
)
from .outbox import Outbox
from .outcome import Outcomes

__all__ = ["Lanes"]

log = get_logger("streamq.worker")

# Seconds cancelled lanes get to unwind and report what they finished.
_CANCEL_GRACE = 2.0
# A key with this many records in one unit leaves its partition's shared lane
# (HandlerSpec.merges_keys) for a lane of its own (Lanes._spread), when the unit would keep
# the keys behind it waiting longer than BURST_HOLD.
KEY_BURST = 64
BURST_HOLD = 0.05
_NONE: frozenset[int] = frozenset()
_offset = operator.attrgetter("offset")


class Lanes:
    """One group's lanes on the event loop, and the poll thread's way to stop them."""

    def __init__(
        self,
        group: str,
        loop: asyncio.AbstractEventLoop,
        stats: Stats,
        executors: dict[Executor, LaneExecutor],
        outcomes: Outcomes,
        reporter: Reporter,
        crashes: CrashCounter | None,
        probe_lock: asyncio.Lock,
        outbox: Outbox | None = None,
        lone_runs: float = 0,
        key_lanes: int = 256,
    ) -> None:
        self._group = group
        self._outbox = outbox
        self._loop = loop
        self._stats = stats
        self._executors = executors
        self._outcomes = outcomes
        self._reporter = reporter
        self._crashes = crashes
        # share groups (no crash counter): lone runs of a redelivered record that may die
        self._lone_runs = lone_runs
        # one suspect at a time in the whole worker, so a death is charged to one record only
        self._probe_lock = probe_lock
        self._lanes: dict[LaneKey, Lane] = {}  # loop thread
        # ordering="none": per topic, the handler's calls allowed to run at once
        self._slots: dict[str, asyncio.Semaphore] = {}
        # handlers that merge keys (HandlerSpec.merges_keys): per partition, the key lanes
        # that were given work; while one of them has some, the shared lane hands every
        # unit on to the key lanes, so no key's later records overtake its earlier ones
        self._key_lanes = key_lanes
        dispatcher = Dispatcher()
        self._split_keys = dispatcher.split_keys
        self._busiest = dispatcher.busiest_key_lane
        self._keyed: dict[TopicPartition, set[Lane]] = {}
        self._costs: dict[str, Cost] = {}  # by topic: its handler's lanes' time per record

    # -- the poll thread's side ----------------------------------------------------------------

    def quiesce(self, tps: list[TopicPartition] | None, timeout: float) -> bool:
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
                self._group,
                timeout,
            )
        return False

    # -- the event loop thread -------------------------------------------------------------------

    def enqueue(self, units: list[Unit]) -> None:
        lanes = self._lanes
        until = 0.0  # the hold of the units run right here (_run_here); 0: none run yet
        for unit in units:
            key, epoch, spec, lease, msgs = unit
            if spec.ordering is Ordering.NONE:
                self._enqueue_unordered(unit)
                continue
            lane = lanes.get(key)
            if lane is None or lane.epoch != epoch:
                lane = lanes[key] = self._lane(key, epoch, spec, lease)
            if lane.stopped or lane.halted:
                continue
            if lane.here and lane.task is None and not lane.pending and type(msgs) is list:
                until = until or time.monotonic() + INLINE_HOLD
                if spec.batch:
                    rest = self._run_batch_here(lane, msgs, until)
                else:
                    rest = self._run_here(lane, msgs, until)
                if rest is None:
                    continue
                lane.pending.extend(rest)
                if lane.task is None:
                    lane.task = self._loop.create_task(self._run_lane(lane))
                continue
            lane.pending.append(msgs)
            if key[1] >= 0 and spec.merges_keys:
                self._keyed.setdefault(key[0], set()).add(lane)
            if lane.task is None:
                lane.task = self._loop.create_task(self._run_lane(lane))

    def _run_here(
        self, lane: Lane, unit: list[Message], until: float
    ) -> list[list[Message]] | None:
        """Run an idle inline lane's unit in this callback, without a task of its own.

        With many partitions a batch holds many small units, and a task per unit (created,
        scheduled, stepped, finished) cost more than the records' handlers. A unit that
        finishes here is reported as its task would have; what cannot (the hold ``until``
        is over, a handler raised, the lease lapsed, a stop) returns as units for the
        lane's task, which goes on exactly where this stopped: a failed record first, as
        ``Retrying`` (its first call already failed), so it gets no extra attempt. A
        partition's shared key lane hands keys on as its task would (``_spread``, ``spill``).
        """
        failed: list[BaseException] = []
        lease = lane.lease
        invoke = lane.spec.invoke
        clock = time.monotonic
        now = clock()
        if now >= until or lane.stopped:
            return [unit]
        if lane.spill is not None:
            unit = self._spread(lane, unit)
            if not unit:
                return None
        n = len(unit)
        lane.dead_lettered = lane.progress = lane.reported = 0
        lane.timed_at = now
        i = 0
        while i < n:
            end = i + INLINE_SLICE if i + INLINE_SLICE < n else n
            if lease is None:
                i = call_each(invoke, unit, i, end, failed)
            else:
                i = call_each_until(invoke, unit, i, end, failed, lease)
            if i < end or clock() >= until or lane.stopped:
                break
        if failed and lane.spill is not None:  # the key waits alone, the others go on
            lane.spill(lane, unit, i, failed.pop())
            n = i
        if i:
            if lane.cost is not None:
                lane.cost.add(clock() - now, i)
            self._stats.handled_by[lane.labels] += i
            self._reporter.report(lane, unit, i)
            lane.seq_base += i
        if i == n:
            return None
        if failed:
            retry = Retrying(unit[i], failed.pop())
            return [retry, unit[i + 1 :]] if i + 1 < n else [retry]
        return [Gapped(unit[i:]) if type(unit) is Gapped else unit[i:]]

    def _run_batch_here(
        self, lane: Lane, unit: list[Message], until: float
    ) -> list[list[Message]] | None:
        """An idle inline lane's batch, handled in the callback that brings it.

        A task per unit (created, stepped through four coroutines, finished) cost the loop
        5 to 10 us a unit: with a no-op batch handler on Apache Kafka (four partitions,
        2,000-record polls) the loop thread spent 0.05-0.07 CPU-s per million records with
        it and 0.04-0.06 without, out of the worker's 0.7 or so. A batch the lane
        cannot start here (the hold is over, a stop, a lapsed lease, more than ``max_batch``
        records) goes to the lane's task whole; one whose handler raised goes there as a
        ``FailedBatch``, which the task retries from the second attempt on.
        """
        now = time.monotonic()
        lease = lane.lease
        if (
            now >= until
            or lane.stopped
            or len(unit) > lane.spec.max_batch
            or (lease is not None and now >= lease.deadline)
        ):
            return [unit]
        lane.dead_lettered = lane.progress = lane.reported = 0
        lane.timed_at = now
        try:
            lane.spec.invoke(unit)
        except BaseException as exc:  # the task's retries decide (critical ones included)
            return [FailedBatch(unit, exc)]
        n = len(unit)
        self._stats.handled_by[lane.labels] += n
        self._reporter.report(lane, unit, n)
        lane.seq_base += n
        return None

    def spill(
        self, lane: Lane, unit: list[Message], start: int, failure: BaseException | None
    ) -> None:
        """Move ``unit[start:]`` of a partition's shared lane to its key lanes.

        With ``failure``, the first of them failed in the shared lane: its key lane starts
        with its recovery while the other keys go on. The unit ends at ``start``.
        """
        rest = unit[start:]
        del unit[start:]
        self._to_keys(lane, self._split_keys(rest, self._key_lanes), rest[0], failure)

    def _spread(self, lane: Lane, unit: list[Message]) -> list[Message]:
        """The part of a unit the shared lane runs itself; the key lanes take the rest.

        A key lane with work keeps its key's records, or they would overtake its earlier
        ones. A key with ``KEY_BURST`` records or more in the unit (a hot key's burst) gets
        a lane of its own, where the other keys take turns with it (F5) and its units are
        long enough to cost little; but only when the unit would take longer than
        ``BURST_HOLD`` at the handler's time per record (``Cost``: wall time, waits for
        the GIL and other lanes' turns included, smoothed). A burst of fast records holds
        the keys behind it up for a few milliseconds, and splitting it cost a task, a unit
        and a report per key and batch: 10 keys on 4 partitions took 1.9 CPU-s per million
        records against partition order's 1.2 (``streamq bench --broker memory://x
        --ordering key --keys 10``). A handler's first unit runs whole (nothing is measured
        yet); a slow handler's hold then hands what is left of it back, split. The many keys
        of a record or two each stay here, in log order, without a unit, a task and a report
        per key. A unit kept whole is a run of tracked records, reported as a ``Span``.
        """
        busy = self._busy_keys(lane)
        # the usual case (no key lane busy, no long burst) is told without building a list
        # per key lane
        if busy or not (
            (lane.cost is not None and len(unit) * lane.cost.per_record < BURST_HOLD)
            or self._busiest(unit, self._key_lanes) < KEY_BURST
        ):
            parts = self._split_keys(unit, self._key_lanes)
            moved = {n: sub for n, sub in parts.items() if n in busy or len(sub) >= KEY_BURST}
            if moved:
                self._to_keys(lane, moved, None, None)
                stay = Gapped(m for n, sub in parts.items() if n not in moved for m in sub)
                stay.sort(key=_offset)  # back to log order: a merge of runs already in order
                lane.spans = False
                return stay
        lane.spans = lane.may_span and type(unit) is not Gapped
        return unit

    def _to_keys(
        self,
        lane: Lane,
        parts: dict[int, list[Message]],
        first: Message | None,
        failure: BaseException | None,
    ) -> None:
        tp, origin = lane.key[0], lane.origin
        units: list[Unit] = []
        for number, sub in parts.items():
            if failure is not None and sub[0] is first:
                assert first is not None
                retry = Retrying(first, failure)
                units.append(Unit((tp, number), lane.epoch, origin, lane.lease, retry))
                sub = sub[1:]
                if not sub:
                    continue
            units.append(Unit((tp, number), lane.epoch, origin, lane.lease, sub))
        self.enqueue(units)

    def _busy_keys(self, lane: Lane) -> Set[int]:
        """The key lanes of this shared lane's partition that still have work (or halted)."""
        keyed = self._keyed.get(lane.key[0])
        if not keyed:
            return _NONE
        for other in list(keyed):
            idle = other.task is None and not other.pending and not other.halted
            if idle or other.stopped or other.epoch != lane.epoch:
                keyed.discard(other)
        return {other.key[1] for other in keyed}

    def _lane(self, key: LaneKey, epoch: int, spec: HandlerSpec, lease: Lease | None) -> Lane:
        tp = key[0]
        labels = (self._group, tp.topic, str(tp.partition), spec.name)
        origin, outbox = spec, self._outbox
        if outbox is not None and (spec.produces or outbox.exactly_once):
            spec = outbox.bind(spec, tp, epoch)
        run = self._executors[spec.executor].runner_for(spec)
        lane = Lane(key, epoch, spec, lease, labels, run, origin)
        if key[1] == ALL_KEYS:
            lane.spill = self.spill
        if origin.merges_keys:  # one estimate per handler (topic), from all its lanes
            lane.cost = self._costs.setdefault(tp.topic, Cost())
        # no dedup skips, and no commit-before (it completes records at dispatch)
        whole = spec.dedup is None and spec.commit is not CommitMode.BEFORE
        # a partition's one lane gets its records in log order, as they were tracked, and
        # reports them whole; its shared key lane too, unit by unit, while no key leaves it
        lane.may_span = lane.spans = whole and (
            spec.ordering is Ordering.PARTITION or key[1] == ALL_KEYS
        )
        # a sync handler, nothing around the call (no dedup check, no crash probes, no
        # outbox): an idle lane's unit runs in the callback that brought it; a batch
        # handler's only in partition order (a shared key lane's units are spread first)
        lane.here = (
            whole
            and (spec.ordering is Ordering.PARTITION or (key[1] == ALL_KEYS and not spec.batch))
            and spec.executor is Executor.INLINE
            and spec is origin
        )
        return lane

    def _enqueue_unordered(self, unit: Unit) -> None:
        """Queue mode: a partition's lanes share one queue of small units.

        Each free lane takes the next, so a slow record (a retry's backoff) holds back only
        the rest of its own unit. The handler's slots cap the lanes running worker-wide.
        """
        (tp, _), epoch, spec, lease, msgs = unit
        lanes = self._lanes
        first = lanes.get((tp, 0))
        if first is None or first.epoch != epoch:
            first = lanes[(tp, 0)] = self._lane((tp, 0), epoch, spec, lease)
            first.peers = [first]
        if first.stopped:
            return
        shared = first.pending
        if type(msgs) is list:  # a Probe or a Chunk (streamq.crashes) stays whole
            # inline handlers share the loop and never overlap: small units only cost them
            most = UNORDERED_UNIT_INLINE if spec.executor is Executor.INLINE else UNORDERED_UNIT
            size = min(most, -(-len(msgs) // spec.concurrency))
            shared.extend(msgs[i : i + size] for i in range(0, len(msgs), size))
        else:
            shared.append(msgs)
        peers = first.peers
        assert peers is not None
        running = sum(1 for lane in peers if lane.task is not None)
        while len(peers) < min(spec.concurrency, running + len(shared)):
            lane = lanes[(tp, len(peers))] = self._lane((tp, len(peers)), epoch, spec, lease)
            lane.pending = shared
            peers.append(lane)
        todo = len(shared)
        for lane in peers:
            if todo <= 0:
                break
            if lane.task is None and not lane.halted:
                lane.task = self._loop.create_task(self._run_lane(lane))
                todo -= 1

    async def _stop_lanes(
        self, tps: list[TopicPartition] | None, finished: threading.Event
    ) -> None:
        wanted = None if tps is None else set(tps)
        tasks = []
        for key, lane in list(self._lanes.items()):
            if wanted is None or key[0] in wanted:
                lane.stop()
                del self._lanes[key]
                self._keyed.pop(key[0], None)
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
        report = self._reporter.report
        slots = self._slots_of(spec) if spec.ordering is Ordering.NONE else None
        held = False
        # the loop just gave this task its turn: an inline lane's hold starts now, so a lane
        # that was idle does not yield (and report) after its first few records
        lane.yielded_at = time.monotonic()
        try:
            while lane.pending and not lane.stopped:
                if slots is not None:  # one slot per unit, so waiting lanes take turns
                    if held:
                        slots.release()
                    held = False
                    await slots.acquire()
                    held = True
                    if not lane.pending or lane.stopped:
                        break
                unit = lane.take(limit)
                if lane.spill is not None:
                    unit = self._spread(lane, unit)
                    if not unit:
                        continue
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
                started = lane.timed_at = time.monotonic()
                try:
                    if kind is Probe:
                        done = await self._run_probe(lane, unit)  # type: ignore[arg-type]
                    elif kind is Retrying or kind is FailedBatch:
                        done = await self._recover(lane, unit)  # type: ignore[arg-type]
                    else:
                        done = await lane.run(lane, unit)
                except asyncio.CancelledError:
                    report(lane, unit, lane.progress)  # keep what finished
                    raise
                if done and lane.cost is not None:  # its turns included: a high estimate
                    lane.cost.add(time.monotonic() - started, done)
                if done > lane.dead_lettered:
                    self._stats.handled_by[lane.labels] += done - lane.dead_lettered
                # Commit-before units report too: the tracker counts in-flight work for both.
                halted = done < len(unit) and not lane.stopped
                report(lane, unit, done, halted)
                if marked >= 0 and crashes is not None and done == len(unit):
                    crashes.unmark(tp, marked)
                lane.seq_base += len(unit)
                if done < len(unit):
                    lane.halted = halted
                    break
        finally:
            if held and slots is not None:
                slots.release()
            lane.task = None

    def _slots_of(self, spec: HandlerSpec) -> asyncio.Semaphore:
        slots = self._slots.get(spec.topic)
        if slots is None:
            slots = self._slots[spec.topic] = asyncio.Semaphore(spec.concurrency)
        return slots

    async def _run_probe(self, lane: Lane, unit: Probe) -> int:
        """Handle one suspect alone, charged to the crash counter while its handler runs."""
        crashes = self._crashes
        tp, msg = lane.key[0], unit[0]
        async with self._probe_lock:
            if lane.stopped:
                return 0
            limit = crashes.limit if crashes is not None else self._lone_runs
            if unit.starts >= limit:
                self._stats.failed_by[lane.labels] += 1
                how = (
                    f"after dying in the range it was part of (crash_limit={limit})"
                    if crashes is not None
                    else f"after the first redelivery; it was delivered {msg.attempt} "
                    f"times and never acknowledged (crash_limit={limit})"
                )
                lost = WorkerLost(
                    f"the worker died {unit.starts} times while handling this record alone {how}",
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                )
                done = 1 if await self._outcomes.dead_letter(lane, msg, lost, 0) else 0
            else:
                if crashes is not None:
                    crashes.begin(tp, msg.offset, unit.starts + 1)
                done = await lane.run(lane, unit)
            if done and crashes is not None:
                crashes.end(tp, msg.offset)
            return done

    async def _recover(self, lane: Lane, unit: FirstCallFailed) -> int:
        """Retry (or dead-letter) what failed outside the task: a batch, or one record."""
        call = self._executors[Executor.INLINE].call
        if type(unit) is FailedBatch:
            return await self._outcomes.run_batch(lane, unit, call, unit.exc)
        return 1 if await self._outcomes.recover(lane, unit[0], unit.exc, 0, call) else 0

    def _skip_seen(self, lane: Lane, unit: list[Message]) -> list[Message]:
        """One dedup check per unit: records already marked are done without a handler."""
        spec = lane.spec
        assert spec.dedup is not None
        keys = dedup_keys(spec, unit)
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
        self._reporter.completions.append(Completion(lane.key[0], lane.epoch, skipped, False))
        if self._reporter.round is not None:
            self._reporter.round.finished(len(skipped))
        self._stats.deduplicated_by[lane.labels] += len(skipped)
        return [m for m, seen in zip(unit, flags, strict=True) if not seen]
