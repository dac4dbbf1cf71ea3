"""What the runtime counts and samples, and what ``streamq.metrics`` reads: nothing else.

The runtime writes these (outcome counters once per unit, latencies once per report, one
sample per poll-thread interval) and the metrics exporter copies them into Prometheus from
its own thread. Both sides import this module and neither imports the other: the runtime
needs no prometheus-client, and the exporter sees a runner only as ``RunnerView``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .handlers import HandlerSpec

__all__ = [
    "COMMIT_BUCKETS",
    "E2E_BUCKETS",
    "HANDLER_BUCKETS",
    "GroupSample",
    "Labels",
    "Latency",
    "PartitionSample",
    "RunnerView",
    "Stats",
]

# (group, topic, partition, handler): the labels of every per-partition counter.
Labels = tuple[str, str, str, str]

# Seconds. Handler buckets start below a millisecond (most handlers are cheap); end-to-end
# buckets reach an hour, since a backlog is exactly when that latency matters.
HANDLER_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0, 3600.0,
)  # fmt: skip
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Stats:
    """Outcome counters keyed by (group, topic, partition, handler), updated once per unit.

    The runtime writes the ``*_by`` counters (the event loop thread, or the poll thread for
    ``consumed`` and ``paused``); ``streamq.metrics`` exports them. The by-topic views
    (``stats.handled["orders"]``) are for tests and summaries.
    """

    KINDS = ("consumed", "handled", "failed", "retried", "dead_lettered", "deduplicated", "paused")

    def __init__(self) -> None:
        # (job, outcome): ok, failed, missed, paused (ticks skipped), overlapped
        self.jobs: Counter[tuple[str, str]] = Counter()
        # delayed records this worker moved to their topics, and envelopes it could not read
        self.delayed: Counter[str] = Counter()
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


class Latency:
    """A histogram accumulated in plain Python: ``add`` is a bisect and two additions.

    ``add(value, n)`` counts ``n`` observations of ``value``: inline and pooled handlers
    are timed per slice of records and each record is counted at the slice's mean, so a
    histogram costs nothing per record.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n


@dataclass(slots=True)
class PartitionSample:
    """One partition as its poll thread saw it (copied into gauges by the exporter)."""

    in_flight: int
    bytes: int
    paused: bool
    halted: bool
    waiting_since: float  # wall time since which work waits without progress; 0: none
    lag: int | None


@dataclass(slots=True)
class GroupSample:
    """What a poll thread publishes every sample interval (swapped in as one reference)."""

    taken: float
    connected: bool
    partitions: dict[Any, PartitionSample] = field(default_factory=dict)


class RunnerView(Protocol):
    """What the exporter reads from one group's runner (``streamq.runtime.group``).

    Read-only here: the runner's threads write them and the exporter reads them as they are,
    so a counter read mid-update is off by one unit until the next flush, never for good.
    """

    @property
    def group(self) -> str: ...
    @property
    def last_poll(self) -> float: ...
    @property
    def sample(self) -> GroupSample | None: ...
    @property
    def handler_latency(self) -> Mapping[Labels, Latency]: ...
    @property
    def e2e_latency(self) -> Mapping[Labels, Latency]: ...
    @property
    def commit_latency(self) -> Mapping[str, Latency]: ...
    @property
    def commit_failures(self) -> Mapping[tuple[str], int]: ...
    @property
    def rebalances(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def ownership_changes(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def backend_events(self) -> Mapping[tuple[str, str, str], int]: ...
    @property
    def specs(self) -> Mapping[str, HandlerSpec]: ...
