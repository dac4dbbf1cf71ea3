"""Back-pressure and fetch health: which partitions the poll thread fetches, and which not.

In-flight work is bounded per partition and per worker (records and bytes). A partition
over its bound is paused and resumed once drained to half; over the worker's bound every
partition is. A halted partition stays paused until it is reassigned. Apart from that,
a partition this member owns must be fetched: one whose records sit unfetched for
``UNFETCHED_AFTER`` seconds (a pause the client kept, a stuck fetch) is said in the log
and resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..brokers.base import Backend
from ..logs import get_logger
from ..message import TopicPartition
from ..offsets import OffsetTracker
from ..settings import Settings
from ..stats import Labels, Stats

__all__ = ["DRAIN_POLL", "UNFETCHED_AFTER", "FlowControl"]

log = get_logger("streamq.worker")

# A partition not paused by us, with nothing in flight, whose fetch position stays behind its
# high watermark this long is not being fetched: said in the log, resumed, shown to health.
UNFETCHED_AFTER = 10.0
_UNFETCHED_INTERVAL = 2.0

# The poll timeout while partitions wait to drain. With the default 0.1 s a worker over its
# in-flight bound had all partitions paused, polled nothing for 0.1 s and resumed only then:
# handlers that drained the bound in 5 ms idled the rest (`streamq bench` on Apache Kafka).
DRAIN_POLL = 0.005


class FlowControl:
    """Pause, resume and halt state of one group's partitions (poll thread only).

    Shares the offset tracker (read-only here) and the partitions' labels with the poll side.
    """

    def __init__(
        self,
        group: str,
        backend: Backend,
        tracker: OffsetTracker,
        settings: Settings,
        stats: Stats,
        labels: dict[TopicPartition, Labels],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._group = group
        self._backend = backend
        self._tracker = tracker
        self._settings = settings
        self._stats = stats
        self._labels = labels
        self._clock = clock
        self.paused: set[TopicPartition] = set()
        self.halted: set[TopicPartition] = set()
        self.halted_in_run: set[TopicPartition] = set()  # survives revokes: for the outcome
        self.held: set[TopicPartition] = set()  # outputs refused by the broker (see hold)
        # partition -> (the position it is stuck at, since when; monotonic)
        self.unfetched_since: dict[TopicPartition, tuple[int, float]] = {}
        self.unfetched_told: set[TopicPartition] = set()
        # assigned, and not yet asked whether records wait past the position: a member
        # whose first fetch is slow must not count as caught up (--until-idle)
        self.unchecked: set[TopicPartition] = set()
        self._next_unfetched = 0.0

    def halt(self, tp: TopicPartition) -> None:
        self.halted.add(tp)
        self.halted_in_run.add(tp)
        self.pause([tp])

    def assigned(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)  # pause state never survives reassignment (C7)
        self.halted.discard(tp)
        self.unchecked.add(tp)
        self._next_unfetched = 0.0  # ask before the next poll

    def hold(self, tps: set[TopicPartition]) -> None:
        """Keep exactly ``tps`` paused while the broker refuses their outputs.

        Their commit cannot pass the refused output, so fetching on would only pile up
        handled records that a restart hands out again; they resume once it was delivered.
        """
        if not tps and not self.held:
            return
        released = self.held - tps
        self.held = set(tps)
        if tps:
            self.pause([tp for tp in tps if tp in self._tracker.parts])
        if released:
            self.resume_drained()

    def forget(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)
        self.halted.discard(tp)
        self.held.discard(tp)
        self.unfetched_since.pop(tp, None)
        self.unfetched_told.discard(tp)
        self.unchecked.discard(tp)

    def resume_drained(self) -> None:
        if self.over_worker_cap(0.5):
            return
        s = self._settings
        ready = []
        for tp in self.paused:
            part = self._tracker.parts.get(tp)
            if tp in self.halted or tp in self.held or part is None:
                continue
            if part.in_flight <= s.max_in_flight // 2 and part.bytes <= s.max_in_flight_bytes // 2:
                ready.append(tp)
        if ready:
            self.paused.difference_update(ready)
            self._backend.resume(ready)

    def draining(self) -> bool:
        """Whether a partition is paused until its in-flight work drains (not halted, not held).

        The poll thread then polls in short steps (``DRAIN_POLL``): it resumes partitions only
        between polls, and a poll of paused partitions returns only at its timeout.
        """
        return any(tp not in self.halted and tp not in self.held for tp in self.paused)

    def over_worker_cap(self, fraction: float) -> bool:
        s = self._settings
        return (
            self._tracker.in_flight_records >= s.worker_max_in_flight * fraction
            or self._tracker.in_flight_bytes >= s.worker_max_in_flight_bytes * fraction
        )

    def pause(self, tps: list[TopicPartition]) -> None:
        new = [tp for tp in tps if tp not in self.paused]
        if new:
            self.paused.update(new)
            self._backend.pause(new)
            for tp in new:
                self._stats.paused_by[self._labels[tp]] += 1

    def in_flight_unhalted(self) -> int:
        halted = sum(
            self._tracker.parts[tp].in_flight for tp in self.halted if tp in self._tracker.parts
        )
        return self._tracker.in_flight_records - halted

    def owes_work(self) -> bool:
        """Records it owns are in flight, wait unfetched, or may wait (not yet asked)."""
        return self.in_flight_unhalted() > 0 or bool(self.unfetched_since or self.unchecked)

    def unfetched_due(self) -> bool:
        return self._clock() >= self._next_unfetched

    def check_unfetched(self, assigned: Iterable[TopicPartition], connected: bool) -> bool:
        """Find partitions this member owns but does not fetch, say so once, and resume them.

        librdkafka keeps a pause through a revoke and a reassignment (the backend resumes on
        assignment for that); whatever else leaves a partition paused or stuck, a member
        must not sit idle, and healthy, next to records it owns. Returns whether any
        records it owns are waiting unfetched.
        """
        now = self._clock()
        self._next_unfetched = now + _UNFETCHED_INTERVAL
        parts = self._tracker.parts
        candidates = [
            tp
            for tp in assigned
            if tp not in self.paused
            and tp not in self.halted
            and (tp not in parts or parts[tp].in_flight == 0)
        ]
        # records past the fetch position of a partition nobody fetches (Kafka; else none)
        if not connected:
            return False
        found = self._backend.unfetched(candidates) if candidates else {}
        if found is None:
            return False  # the broker did not answer: ask again at the next interval
        # the rest are paused, halted or busy: fetched, or not this member's to fetch now
        self.unchecked.clear()
        for tp in list(self.unfetched_since):
            if tp not in found or found[tp][0] != self.unfetched_since[tp][0]:
                del self.unfetched_since[tp]  # fetched meanwhile: the position moved
                self.unfetched_told.discard(tp)
        stuck = []
        for tp, (position, count) in found.items():
            since = self.unfetched_since.setdefault(tp, (position, now))[1]
            if now - since >= UNFETCHED_AFTER and tp not in self.unfetched_told:
                self.unfetched_told.add(tp)
                stuck.append(tp)
                log.warning(
                    "group %s: %s[%d] has %d record(s) past its position %d that were not "
                    "fetched for %.0fs although it is not paused for back-pressure; resuming it",
                    self._group, tp.topic, tp.partition, count, position, now - since,
                )  # fmt: skip
        if stuck:
            self._backend.resume(stuck)
        return bool(found)
