"""When positions are committed, and what a commit attempt means for the offset tracker.

The poll thread owns the committer. It applies the completions lanes reported to the offset
tracker, whose commit position per partition is the first offset not yet done
(``streamq.offsets``), and commits those positions every ``commit_every`` records or
``commit_interval`` seconds, asynchronously; synchronously on revoke, when idle and on
shutdown. ``commit="before"`` units are committed before any handler sees them.

Time comes from ``clock`` (monotonic seconds), so the policy is testable without waiting.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

from .. import failpoints
from ..brokers.base import Backend
from ..errors import BrokerError, MemberFenced
from ..logs import get_logger
from ..message import Message, TopicPartition
from ..offsets import OffsetTracker
from ..stats import COMMIT_BUCKETS, Latency
from .lanes import Completion
from .outbox import Outbox

__all__ = ["Committer"]

log = get_logger("streamq.worker")


class Committer:
    """The commit policy of one group's member (poll thread only).

    ``commit_latency`` and ``commit_failures`` are read by ``streamq.metrics``.
    """

    def __init__(
        self,
        group: str,
        backend: Backend,
        tracker: OffsetTracker,
        *,
        every: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        outbox: Outbox | None = None,
        sync_wait: float = 5.0,
        share: bool = False,
        caught_up_every: int | None = None,
    ) -> None:
        self._group = group
        self._outbox = outbox  # outputs of producing handlers (streamq.runtime.outbox)
        self._sync_wait = sync_wait  # a synchronous commit waits this long for their acks
        self._backend = backend
        self._tracker = tracker
        # a share group acknowledges each finished record (``Backend.acknowledge``); its
        # commits only send them (its positions mean nothing: records of a partition go to
        # many members, and redelivered ones come below the last round's)
        self._acks_each = share
        self._every = 1 if share else every  # share: commits are the acks of each round
        # while caught up (see ``maybe_commit``): the backend's cap, if below ``every``
        self._caught_up_every = min(self._every, caught_up_every or self._every)
        self._interval = interval
        self._clock = clock
        self._since_commit = 0
        self._last_commit = clock()
        self.closing = False  # set by shutdown: a fenced commit is then expected, not fatal
        self.commit_latency: dict[str, Latency] = {}
        self.commit_failures: Counter[tuple[str]] = Counter()

    def apply(
        self,
        completions: deque[Completion],
        progress: dict[TopicPartition, tuple[int | None, float]] | None,
    ) -> list[TopicPartition]:
        """Hand what lanes finished to the tracker; returns the partitions that halted.

        With ``progress`` (metrics on) it notes, for liveness, when each partition's
        position last moved (wall time).
        """
        tracker = self._tracker
        halted: list[TopicPartition] = []
        now = 0.0
        while completions:
            tp, epoch, msgs, stopped = completions.popleft()
            if not tracker.complete(tp, epoch, msgs):
                continue
            if self._acks_each:  # share: each record on its own, whatever lies below it
                # share lanes are unordered: they report records, never a Span
                assert isinstance(msgs, list)
                self._backend.acknowledge(tp, msgs)
            if progress is not None:
                position = tracker.parts[tp].position
                seen = progress.get(tp)
                if seen is None or seen[0] != position:
                    now = now or time.time()
                    progress[tp] = (position, now)
            self._since_commit += len(msgs)
            if stopped:
                halted.append(tp)
        return halted

    def maybe_commit(self, backlog: bool = True) -> None:
        """Commit every ``every`` records or ``interval`` seconds, more often when caught up.

        ``backlog``: the last poll was half full or more. Without one, a backend whose commit
        costs per record (``Backend.commit_records_cap``) commits after fewer: the records
        arrive at a steady rate, and one commit per interval carrying all of them held the
        poll thread long enough to be the p99 from broker to handler. With a backlog, every
        commit is of the largest size, which costs least per record in a drain.
        """
        every = self._every if backlog else self._caught_up_every
        if self._since_commit >= every or self._clock() - self._last_commit >= self._interval:
            self.commit(sync=False)

    def commit(self, *, sync: bool, only: Iterable[TopicPartition] | None = None) -> bool:
        self._last_commit = self._clock()
        self._since_commit = 0
        # A synchronous commit re-asserts every position, which also repairs an earlier
        # asynchronous commit that failed without the tracker knowing.
        tracker = self._tracker
        every = sync or self._acks_each
        positions = tracker.positions() if every else tracker.dirty_positions()
        if only is not None:
            keep = set(only)
            positions = {tp: pos for tp, pos in positions.items() if tp in keep}
        if not positions:
            return True
        outbox = self._outbox
        complete = True
        if outbox is not None and not outbox.exactly_once:
            wanted = dict(positions)
            outbox.gate(positions, wait=self._sync_wait if sync else 0.0)
            complete = positions == wanted
            if not positions:
                return complete
        try:
            if outbox is not None and outbox.exactly_once:
                self._timed_transaction(positions, outbox)
            else:
                self._timed_commit(positions, sync=sync)
            if failpoints.ACTIVE:
                failpoints.hit("after_commit")
        except MemberFenced:
            if self.closing:
                return False
            raise
        except BrokerError as exc:
            log.warning(
                "group %s: commit failed (%s); records after the last committed offsets will be "
                "redelivered if these partitions move",
                self._group,
                exc,
            )
            return False
        self._tracker.mark_committed(positions)
        return complete

    def step_over_markers(self, tps: list[TopicPartition]) -> None:
        """When idle, move positions past trailing transaction markers (Kafka).

        A group that read a pipeline's topic to its end then commits that end, and looks
        caught up to the other members (``--until-idle``) and to lag.
        """
        parts = self._tracker.parts
        for tp, position in self._backend.fetch_positions(tps).items():
            if tp in parts:
                parts[tp].skip_to(position)

    def commit_before(self, tp: TopicPartition, epoch: int, msgs: list[Message]) -> bool:
        """At-most-once: the position moves past the records before any handler sees them."""
        position = {tp: msgs[-1].offset + 1}
        try:
            self._timed_commit(position, sync=True)
        except BrokerError as exc:
            log.warning(
                "group %s: commit before handling failed (%s); not handling", self._group, exc
            )
            self._tracker.complete(tp, epoch, msgs)
            return False
        self._tracker.mark_committed(position)
        return True

    def _timed_commit(self, positions: dict[TopicPartition, int], *, sync: bool) -> None:
        started = self._clock()
        try:
            self._backend.commit(positions, sync=sync)
        except BrokerError:
            self.commit_failures[(self._group,)] += 1
            raise
        finally:
            self._took("sync" if sync else "async", started)

    def _timed_transaction(self, positions: dict[TopicPartition, int], outbox: Outbox) -> None:
        """Exactly once: the held outputs below ``positions`` and the positions, atomically.

        A failed attempt publishes nothing and keeps the outputs for the next one.
        """
        started = self._clock()
        try:
            self._backend.commit_transaction(positions, outbox.take(positions))
        except BrokerError:
            self.commit_failures[(self._group,)] += 1
            raise
        finally:
            self._took("transaction", started)
        outbox.settle()

    def _took(self, mode: str, started: float) -> None:
        latency = self.commit_latency.get(mode)
        if latency is None:
            latency = self.commit_latency[mode] = Latency(COMMIT_BUCKETS)
        latency.add(self._clock() - started)
