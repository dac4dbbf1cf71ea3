"""How a lane runs its units: one class per ``Executor``, chosen once when the lane is set up.

Each executor runs a unit's records in order and reports progress (``Reporter``); when a
handler raises, it hands the record to the shared failure path (``Outcomes``) with its own
``call``, so a retry runs where the first attempt ran. Batch handlers go through the
failure path's batch runner with the same ``call``.

Where handlers run: inline on the event loop (``InlineExecutor``), awaited on it
(``AsyncioExecutor``), or in the worker's thread or process pool (``streamq.runtime.pools``)
one chunk at a time (``ThreadsExecutor``, ``ProcessesExecutor``).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Any

from ..dispatch import call_each, call_each_until
from ..handlers import Executor, HandlerSpec
from ..logs import about, get_logger
from ..message import Message
from .lanes import Lane, Reporter, RunUnit
from .outcome import Outcomes
from .pools import (
    BrokenProcessPool,
    PoolProcessDied,
    Pools,
    call_each_leased,
    deadline_marker,
    process_chunk,
    read_deadline_marker,
)

__all__ = [
    "INLINE_HOLD",
    "INLINE_SLICE",
    "AsyncioExecutor",
    "InlineExecutor",
    "LaneExecutor",
    "PoolExecutor",
    "ProcessesExecutor",
    "ThreadsExecutor",
    "executors",
]

log = get_logger("streamq.worker")

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


class LaneExecutor(ABC):
    """Runs units of lanes whose handlers share one ``Executor``."""

    def __init__(
        self,
        group: str,
        outcomes: Outcomes,
        reporter: Reporter,
        loop: asyncio.AbstractEventLoop,
        pools: Pools,
    ) -> None:
        self._group = group
        self._outcomes = outcomes
        self._reporter = reporter
        self._loop = loop
        self._pools = pools

    def runner_for(self, spec: HandlerSpec) -> RunUnit:
        """What a lane of ``spec`` calls per unit (``Lane.run``)."""
        return self.run_batch if spec.batch else self.run

    @abstractmethod
    async def run(self, lane: Lane, unit: list[Message]) -> int:
        """Handle ``unit`` record by record; returns how many finished."""

    @abstractmethod
    async def call(self, spec: HandlerSpec, arg: Any) -> None:
        """One call of the handler (a retry, a batch), wherever this executor runs it."""

    async def run_batch(self, lane: Lane, unit: list[Message]) -> int:
        return await self._outcomes.run_batch(lane, unit, self.call)


class InlineExecutor(LaneExecutor):
    """Sync handlers called on the event loop itself."""

    async def call(self, spec: HandlerSpec, arg: Any) -> None:
        spec.invoke(arg)

    async def run(self, lane: Lane, unit: list[Message]) -> int:
        """Run inline, yielding the loop whenever this lane held it for ``INLINE_HOLD``.

        Inline handlers share the event loop. Without the yield one lane would hold it for a
        whole fetch, and a revoke could not stop it within ``revoke_timeout``: the old owner
        would go on handling records that the new owner handles too.
        """
        invoke = lane.spec.invoke
        lease = lane.lease
        marks = lane.spec.dedup is not None
        report, finished = self._reporter.report, self._reporter.finished
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
                    finished(lane, unit, i, marks)
                    if not await self._outcomes.await_lease(lane):
                        return i
            if failed:
                finished(lane, unit, i, marks)
                if lane.spill is not None:  # a partition's shared lane: the key waits alone
                    lane.spill(lane, unit, i, failed.pop())
                    return i
                if not await self._outcomes.recover(lane, unit[i], failed.pop(), i, self.call):
                    return i
                i += 1
            lane.progress = i
            if marks:  # a crash re-handles at most one slice that the store did not see
                report(lane, unit, i)
            now = clock()
            if now - lane.yielded_at >= INLINE_HOLD:
                report(lane, unit, i)
                await asyncio.sleep(0)
                lane.yielded_at = lane.timed_at = clock()
                if lane.stopped:
                    return i
        return n


class AsyncioExecutor(LaneExecutor):
    """Async handlers awaited on the event loop, one record of a lane at a time."""

    async def call(self, spec: HandlerSpec, arg: Any) -> None:
        await spec.invoke(arg)

    async def run(self, lane: Lane, unit: list[Message]) -> int:
        invoke = lane.spec.invoke
        lease = lane.lease
        for i, msg in enumerate(unit):
            if lane.stopped:
                return i
            expired = lease is not None and time.monotonic() >= lease.deadline
            if expired and not await self._outcomes.await_lease(lane):
                return i
            try:
                await invoke(msg)
            except BaseException as exc:
                if not await self._outcomes.recover(lane, msg, exc, i, self.call):
                    return i
            lane.progress = i + 1
            if not lane.progress % INLINE_SLICE:
                self._reporter.report(lane, unit, lane.progress)
        return len(unit)


class PoolExecutor(LaneExecutor):
    """Sync handlers in one of the worker's pools, one chunk of a lane at a time."""

    chunk_size: int

    async def run(self, lane: Lane, unit: list[Message]) -> int:
        """Hand the unit to the pool one chunk at a time, in order.

        The lane waits for each chunk, so its records never overlap; other lanes' chunks run
        in the pool meanwhile. A revoke or stop waits for at most the running chunk.
        """
        spec = lane.spec
        lease = lane.lease
        chunk = 1 if spec.timeout is not None else self.chunk_size  # the late one is known
        n = len(unit)
        i = 0
        alone_until = 0  # after a pool process died: one record per call, to find the killer
        while i < n:
            expired = lease is not None and time.monotonic() >= lease.deadline
            if expired and not await self._outcomes.await_lease(lane):
                return i
            end = min(i + (1 if i < alone_until else chunk), n)
            i, exc = await self._run_chunk(lane, unit, i, end)
            if isinstance(exc, PoolProcessDied) and end - i > 1:
                # Which record of the chunk killed it is unknown: charge none, and take the
                # rest of the chunk one record at a time (those that ran before the death run
                # again: at-least-once).
                alone_until = end
                continue
            if exc is not None:
                self._reporter.finished(lane, unit, i, lane.spec.dedup is not None)
                if not await self._outcomes.recover(lane, unit[i], exc, i, self.call):
                    return i
                i += 1
            lane.progress = i
            self._reporter.report(lane, unit, i)
            if lane.stopped:
                return i
        return n

    @abstractmethod
    async def _run_chunk(
        self, lane: Lane, unit: list[Message], start: int, end: int
    ) -> tuple[int, BaseException | None]:
        """Run ``unit[start:end]`` in the pool: where it stopped, and what stopped it."""


class ThreadsExecutor(PoolExecutor):
    """Sync handlers in the worker's thread pool."""

    chunk_size = POOL_CHUNK_THREADS

    async def call(self, spec: HandlerSpec, arg: Any) -> None:
        await self._loop.run_in_executor(self._pools.threads(), spec.invoke, arg)

    async def _run_chunk(
        self, lane: Lane, unit: list[Message], start: int, end: int
    ) -> tuple[int, BaseException | None]:
        failed: list[BaseException] = []
        stopped = await self._loop.run_in_executor(
            self._pools.threads(), call_each_leased, lane.spec.invoke, unit, start, end, failed,
            lane.lease,
        )  # fmt: skip
        return stopped, failed[0] if failed else None


class ProcessesExecutor(PoolExecutor):
    """Sync module-level handlers in the worker's process pool."""

    chunk_size = POOL_CHUNK_PROCESSES

    async def call(self, spec: HandlerSpec, arg: Any) -> None:
        _, exc = await self._in_process(spec, arg if spec.batch else [arg])
        if exc is not None:
            raise exc

    async def _run_chunk(
        self, lane: Lane, unit: list[Message], start: int, end: int
    ) -> tuple[int, BaseException | None]:
        done, exc = await self._in_process(lane.spec, unit[start:end])
        return start + done, exc

    async def _in_process(
        self, spec: HandlerSpec, records: list[Message]
    ) -> tuple[int, BaseException | None]:
        pool = self._pools.processes()
        marker = deadline_marker() if spec.timeout is not None else None
        try:
            done, exc, outputs = await self._loop.run_in_executor(
                pool, process_chunk, spec.fn, spec.batch, records, spec.timeout, marker,
                spec.produces, spec.outputs,
            )  # fmt: skip
        except BrokenProcessPool as broken:
            self._pools.replace_broken_processes(pool)
            stack = read_deadline_marker(marker)
            if stack:  # the process's own deadline ended it: the handler ran past the timeout
                msg = records[0]
                log.warning(
                    "handler %s ran past timeout=%ss on %s[%d]@%s: its pool process was "
                    "killed; it was at:\n%s",
                    spec.name, spec.timeout, msg.topic, msg.partition,
                    self._outcomes.at(msg.offset), stack,
                    extra=about(spec.name, msg, self._group),
                )  # fmt: skip
                return 0, TimeoutError(
                    f"handler ran past timeout={spec.timeout}s; its pool process was killed"
                )
            return 0, PoolProcessDied(f"a process of the handler pool died: {broken}")
        finally:
            read_deadline_marker(marker, remove=True)
        if outputs is not None and spec.sink is not None:
            last = records[-1:] if spec.batch else records  # a batch's outputs: its last input
            for msg, produced in zip(last, outputs, strict=False):
                spec.sink(msg, produced)
        return int(done), exc


def executors(
    group: str,
    outcomes: Outcomes,
    reporter: Reporter,
    loop: asyncio.AbstractEventLoop,
    pools: Pools,
) -> dict[Executor, LaneExecutor]:
    """One executor of each kind for one group's lanes."""
    kinds: dict[Executor, type[LaneExecutor]] = {
        Executor.INLINE: InlineExecutor,
        Executor.ASYNCIO: AsyncioExecutor,
        Executor.THREADS: ThreadsExecutor,
        Executor.PROCESSES: ProcessesExecutor,
    }
    return {kind: cls(group, outcomes, reporter, loop, pools) for kind, cls in kinds.items()}
