"""The commit observer of RELIABILITY.md section 3: what the broker holds as done, sampled live.

A thread samples the group's committed positions about five times a second while a fault
test runs. Kafka: the committed offset per partition, fetched by a consumer that never
subscribes. Redis: per partition stream, the group's last-delivered ID and its pending
entries list, read in one MULTI so the two agree. After the run, ``check_commits`` holds
every sample against the handler ledger: a record the broker considered done at a sample's
time must have been handled (an ``E`` line) before that time (I2, "never commit ahead").

Sample times are taken after the broker's answer arrived, so a commit the answer shows
happened before that time: the check never raises a false alarm on timing.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.integration.helpers import Entry

from .invariants import first_ends, handled_offsets

SAMPLE_EVERY = 0.2


@dataclass(frozen=True)
class Sample:
    """At ``t_ns``, partition ``partition`` had everything below ``committed`` done, except
    (Redis) the ``pending`` offsets; ``pending`` is None on Kafka."""

    t_ns: int
    partition: int
    committed: int
    pending: frozenset[int] | None = None


@dataclass
class CommitObserver:
    """Samples the committed positions of ``group`` on ``topic`` until stopped."""

    kind: str  # "kafka" or "redis"
    url: str
    topic: str
    group: str
    partitions: int
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CommitObserver:
        """Sample from now on; for runs that span more than one block, else use ``with``."""
        self._thread = threading.Thread(target=self._run, name="commit-observer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> CommitObserver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        sample = self._kafka_sampler() if self.kind == "kafka" else self._redis_sampler()
        try:
            while not self._stop.wait(SAMPLE_EVERY):
                try:
                    got = sample()
                except Exception:  # the broker is down or frozen: that is the fault
                    self.errors += 1
                    continue
                self.samples.extend(got)
            # and the state at the end: a run that commits only when its workers stop (a
            # long commit_interval) is done before the next tick, and that commit counts too
            with contextlib.suppress(Exception):
                self.samples.extend(sample())
        finally:
            with contextlib.suppress(Exception):
                close = getattr(sample, "close", None)
                if close is not None:
                    close()

    def _kafka_sampler(self) -> Any:
        from confluent_kafka import Consumer, TopicPartition

        bootstrap = self.url.removeprefix("kafka://")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": self.group,
                             "enable.auto.commit": False, "log_level": 0})  # fmt: skip
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]

        def sample() -> list[Sample]:
            found = consumer.committed(tps, 2)
            now = time.monotonic_ns()
            return [Sample(now, tp.partition, tp.offset) for tp in found if tp.offset >= 0]

        sample.close = consumer.close  # type: ignore[attr-defined]
        return sample

    def _redis_sampler(self) -> Any:
        import redis

        from streamq.brokers.redis.entries import id_to_offset

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        streams = [f"{self.topic}:{p}" for p in range(self.partitions)]

        def sample() -> list[Sample]:
            pipe = client.pipeline(transaction=True)
            for stream in streams:
                pipe.xinfo_groups(stream)
                pipe.xpending_range(stream, self.group, "-", "+", 1_000_000)
            answers = pipe.execute(raise_on_error=False)
            now = time.monotonic_ns()
            out = []
            for p in range(self.partitions):
                groups, pending = answers[2 * p], answers[2 * p + 1]
                if isinstance(groups, Exception) or isinstance(pending, Exception):
                    continue  # no group yet
                mine = [g for g in groups if g["name"].decode() == self.group]
                if not mine:
                    continue
                last = mine[0]["last-delivered-id"]
                if last in (b"0-0", "0-0"):
                    continue
                out.append(
                    Sample(now, p, id_to_offset(last) + 1,
                           frozenset(id_to_offset(e["message_id"]) for e in pending))
                )  # fmt: skip
            return out

        sample.close = client.close  # type: ignore[attr-defined]
        return sample


def check_commits(samples: list[Sample], entries: list[Entry]) -> int:
    """Assert I2 over every sample; returns how many (sample, record) pairs were checked.

    Only handled records are held against the samples: a record that went to the DLQ has no
    ``E`` line, and one never handled is I1's to report.
    """
    assert samples, "the commit observer took no sample: I2 was not checked"
    first_end = first_ends(entries)
    offsets = handled_offsets(first_end)
    # Per partition, the running max of the first E times in offset order.
    running: dict[int, list[int]] = {}
    for partition, offs in offsets.items():
        acc, worst = [], 0
        for off in offs:
            worst = max(worst, first_end[(partition, off)])
            acc.append(worst)
        running[partition] = acc
    checked = 0
    for s in samples:
        offs = offsets.get(s.partition, [])
        end = bisect.bisect_left(offs, s.committed)
        # Everything below the first pending entry is done: one look at the running max.
        whole = end if not s.pending else min(end, bisect.bisect_left(offs, min(s.pending)))
        checked += whole
        late = None
        if whole and running[s.partition][whole - 1] >= s.t_ns:
            late = next(o for o in offs[:whole] if first_end[(s.partition, o)] >= s.t_ns)
        for off in offs[whole:end] if late is None else ():
            if off not in (s.pending or ()):
                checked += 1
                if first_end[(s.partition, off)] >= s.t_ns:
                    late = off
                    break
        if late is not None:
            how = "committed" if s.pending is None else "acknowledged (not pending, delivered)"
            raise AssertionError(
                f"I2 ran ahead: partition {s.partition} {how} up to {s.committed} while "
                f"offset {late} was handled only "
                f"{(first_end[(s.partition, late)] - s.t_ns) / 1e6:.1f} ms later"
            )
    return checked


def observe(broker: Any, topic: str, group: str, partitions: int = 2) -> CommitObserver:
    """A CommitObserver for a ``tests.conftest.Broker``; use it as a context manager."""
    return CommitObserver(broker.kind, broker.url, topic, group, partitions)
