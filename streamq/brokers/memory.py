"""``memory://NAME[?partitions=P]``: a complete in-process log for users' tests and the demo.

Every Producer and App in one process that name the same NAME share one log: topics with
partitions and dense offsets, consumer groups with exclusive partition ownership and
rebalances, committed offsets, seek and pause. Topics are created on first use with P
partitions (default 4). It is faithful to the interface in ``base.py`` so a handler tested
here behaves the same on Kafka or Redis, but it is never a stand-in for them in streamq's own
integration tests.

Group protocol: members join and leave; whenever membership changes, each member computes
its target assignment deterministically (partition i of a topic goes to the i-th subscribed
member, round robin) at its next poll. It revokes what it must give up (the worker commits
during the callback), releases those partitions, and acquires targets as soon as their
previous owner released them. A member that has not polled for ``SESSION_TIMEOUT`` seconds
is evicted, and on its next poll finds its partitions lost.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from ..errors import CommitFailed, ConfigError, UnknownTopicOrPartition
from ..message import Headers, Message, TopicPartition
from ..murmur2 import partition_for_key
from .base import (
    Admin,
    Backend,
    Broker,
    Delivered,
    ProducerBackend,
    Rebalance,
    RecordMetadata,
)

if TYPE_CHECKING:
    from ..pipeline import Output

__all__ = ["SESSION_TIMEOUT", "MemoryBroker", "MemoryLog", "read_log"]

SESSION_TIMEOUT = 10.0
NO_VIEW = (
    "memory:// lives inside one process, so another process cannot replay, reset, "
    "tail or measure it; use a kafka:// or redis:// broker"
)

# key, value, headers, timestamp (ms)
_Rec = tuple[bytes | None, bytes | None, Headers | None, int]


@dataclass
class _Group:
    members: dict[int, tuple[str, ...]] = field(default_factory=dict)
    last_seen: dict[int, float] = field(default_factory=dict)
    generation: int = 0
    owner: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    states: dict[TopicPartition, str] = field(default_factory=dict)


class MemoryLog:
    """One named log; every method is thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition(threading.RLock())
        self.topics: dict[str, list[list[_Rec]]] = {}
        self.groups: dict[str, _Group] = {}
        self._ids = itertools.count(1)

    def new_member_id(self) -> int:
        return next(self._ids)

    def ensure_topic(self, topic: str, partitions: int) -> list[list[_Rec]]:
        with self.cond:
            parts = self.topics.get(topic)
            if parts is None:
                parts = self.topics[topic] = [[] for _ in range(partitions)]
                self.cond.notify_all()
            return parts

    def append(self, tp: TopicPartition, rec: _Rec) -> int:
        with self.cond:
            log = self.topics[tp.topic][tp.partition]
            log.append(rec)
            self.cond.notify_all()
            return len(log) - 1

    def group(self, name: str) -> _Group:
        with self.cond:
            return self.groups.setdefault(name, _Group())

    def records(self, tp: TopicPartition) -> list[_Rec]:
        """A snapshot of one partition, for tests and tools."""
        with self.cond:
            return list(self.topics[tp.topic][tp.partition])


_REGISTRY: dict[str, MemoryLog] = {}
_REGISTRY_LOCK = threading.Lock()


def get_log(name: str) -> MemoryLog:
    with _REGISTRY_LOCK:
        log = _REGISTRY.get(name)
        if log is None:
            log = _REGISTRY[name] = MemoryLog(name)
        return log


def parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/") or "default"
    query = parse_qs(parts.query)
    problems = [f"{url}: unknown option {k!r}" for k in query if k != "partitions"]
    partitions = 4
    if "partitions" in query:
        raw = query["partitions"][-1]
        if not raw.isdigit() or int(raw) < 1:
            problems.append(f"{url}: partitions must be a positive integer, got {raw!r}")
        else:
            partitions = int(raw)
    if problems:
        raise ConfigError(problems)
    return name, partitions


def read_log(url: str, topic: str) -> Iterator[Message]:
    """Every record of ``topic`` in this process's log named by ``url`` (``read_topic``)."""
    log = get_log(parse_url(url)[0])
    if topic not in log.topics:
        raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
    for p, records in enumerate(log.topics[topic]):
        for offset, (key, value, headers, ts) in enumerate(list(records)):
            yield Message(topic, p, offset, key, value, headers, ts)


class MemoryBroker(Broker):
    def __init__(self, url: str) -> None:
        self.url = url
        name, self.default_partitions = parse_url(url)
        self.log = get_log(name)

    def consumer(self, group: str, settings: Any) -> MemoryConsumer:
        return MemoryConsumer(self, group, getattr(settings, "auto_offset_reset", "earliest"))

    def share_consumer(self, group: str, settings: Any, round_size: int) -> MemoryConsumer:
        """A share group on memory:// is a classic one: one process reads the partitions.

        Records run unordered all the same (``group_type="share"`` implies it).
        """
        return self.consumer(group, settings)

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self)

    def admin(self) -> MemoryAdmin:
        return MemoryAdmin(self)

    def view(self) -> NoReturn:
        raise ConfigError(NO_VIEW)


class MemoryProducer(ProducerBackend):
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._log = broker.log
        self._round_robin = itertools.count()

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        parts = self._log.ensure_topic(topic, self._broker.default_partitions)
        n = len(parts)
        if partition is None:
            partition = (
                partition_for_key(key, n) if key is not None else next(self._round_robin) % n
            )
        elif not 0 <= partition < n:
            raise UnknownTopicOrPartition(f"{topic} has {n} partitions; no partition {partition}")
        ts = timestamp if timestamp is not None else time.time_ns() // 1_000_000
        offset = self._log.append(TopicPartition(topic, partition), (key, value, headers, ts))
        fut: Future[RecordMetadata] = Future()
        fut.set_result(RecordMetadata(topic, partition, offset))
        return fut

    def publish(self, outputs: Sequence[Output], delivered: Delivered) -> None:
        for out in outputs:
            try:
                self.send(out.topic, out.value, out.key, out.headers, out.partition)
            except Exception as exc:
                delivered(exc, out)
            else:
                delivered(None, None)

    def flush(self, timeout: float | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


class MemoryAdmin(Admin):
    def __init__(self, broker: MemoryBroker) -> None:
        self._log = broker.log

    def create_topic(self, name: str, partitions: int, *, compact: bool = False) -> None:
        with self._log.cond:
            if name in self._log.topics:
                raise ConfigError(f"topic {name!r} already exists")
            self._log.ensure_topic(name, partitions)

    def list_topics(self) -> dict[str, int]:
        with self._log.cond:
            return {t: len(p) for t, p in self._log.topics.items()}

    def close(self) -> None:
        pass


class MemoryConsumer(Backend):
    def __init__(self, broker: MemoryBroker, group: str, reset: str) -> None:
        self._broker = broker
        self._log = broker.log
        self._group_name = group
        self._group = self._log.group(group)
        self._reset = reset
        self._id = self._log.new_member_id()
        self._topics: tuple[str, ...] = ()
        self._generation = -1
        self._owned: dict[TopicPartition, int] = {}  # tp -> next offset to fetch
        self._waiting: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._rotate = 0
        self._callbacks: tuple[Rebalance, Rebalance, Rebalance] | None = None
        self._closed = False

    # -- membership --------------------------------------------------------------------------

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        self._topics = tuple(topics)
        self._callbacks = (on_assign, on_revoke, on_lost)
        for t in self._topics:
            self._log.ensure_topic(t, self._broker.default_partitions)
        self._join()

    def _join(self) -> None:
        with self._log.cond:
            g = self._group
            g.members[self._id] = self._topics
            g.last_seen[self._id] = time.monotonic()
            g.generation += 1
            self._log.cond.notify_all()

    def _target(self) -> set[TopicPartition]:
        g = self._group
        target = set()
        for topic in self._topics:
            members = sorted(m for m, ts in g.members.items() if topic in ts)
            idx = members.index(self._id)
            for p in range(len(self._log.topics[topic])):
                if p % len(members) == idx:
                    target.add(TopicPartition(topic, p))
        return target

    def _expire_members(self, now: float) -> None:
        g = self._group
        dead = [m for m, seen in g.last_seen.items() if now - seen > SESSION_TIMEOUT]
        for m in dead:
            del g.members[m], g.last_seen[m]
            for tp in [tp for tp, o in g.owner.items() if o == m]:
                del g.owner[tp]
        if dead:
            g.generation += 1
            self._log.cond.notify_all()

    def _sync(self) -> None:
        """Follow the group: detect loss, revoke, release, acquire. Callbacks run unlocked."""
        assert self._callbacks is not None
        on_assign, on_revoke, on_lost = self._callbacks
        with self._log.cond:
            g = self._group
            now = time.monotonic()
            if self._id not in g.members:
                lost = list(self._owned)
            else:
                g.last_seen[self._id] = now
                self._expire_members(now)
                lost = []
        if lost:
            self._owned.clear()
            self._paused.clear()
            self._waiting.clear()
            on_lost(lost)
            self._join()
        with self._log.cond:
            if self._generation == g.generation and not self._waiting:
                return
            self._generation = g.generation
            target = self._target()
            revoke = [tp for tp in self._owned if tp not in target]
        if revoke:
            on_revoke(revoke)
            with self._log.cond:
                for tp in revoke:
                    self._owned.pop(tp, None)
                    self._paused.discard(tp)
                    if g.owner.get(tp) == self._id:
                        del g.owner[tp]
                self._log.cond.notify_all()
        acquired = []
        with self._log.cond:
            self._waiting = set()
            for tp in sorted(target):
                if tp in self._owned:
                    continue
                holder = g.owner.get(tp)
                if holder is not None and holder != self._id:
                    self._waiting.add(tp)
                    continue
                g.owner[tp] = self._id
                self._owned[tp] = self._start_offset(tp)
                acquired.append(tp)
        if acquired:
            on_assign(acquired)

    def lag(self, positions: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """Records past each position (the log is in this process: no I/O)."""
        with self._log.cond:
            return {
                tp: max(0, len(self._log.topics[tp.topic][tp.partition]) - pos)
                for tp, pos in positions.items()
                if pos is not None and tp.topic in self._log.topics
            }

    def _start_offset(self, tp: TopicPartition) -> int:
        committed = self._group.committed.get(tp)
        if committed is not None:
            return committed
        return 0 if self._reset == "earliest" else len(self._log.topics[tp.topic][tp.partition])

    def lease_of(self, tp: TopicPartition) -> None:
        return None  # ownership is fenced by the group itself

    @property
    def settled(self) -> bool:
        with self._log.cond:
            return (
                self._id in self._group.members
                and self._generation == self._group.generation
                and not self._waiting
            )

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            self._sync()
            with self._log.cond:
                batch = self._fetch(max_records)
                if batch:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return batch
                self._log.cond.wait(remaining)

    def _fetch(self, max_records: int) -> list[Message]:
        ready = [tp for tp in self._owned if tp not in self._paused]
        if not ready:
            return []
        self._rotate = (self._rotate + 1) % len(ready)
        ready = ready[self._rotate :] + ready[: self._rotate]
        batch: list[Message] = []
        topics = self._log.topics
        for tp in ready:
            room = max_records - len(batch)
            if room <= 0:
                break
            start = self._owned[tp]
            recs = topics[tp.topic][tp.partition][start : start + room]
            if not recs:
                continue
            topic, partition = tp
            batch.extend(
                Message(topic, partition, start + i, r[0], r[1], r[2], r[3])
                for i, r in enumerate(recs)
            )
            self._owned[tp] = start + len(recs)
        return batch

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update(tp for tp in tps if tp in self._owned)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._owned:
            raise UnknownTopicOrPartition(f"cannot seek {tp}: not assigned to this member")
        self._owned[tp] = max(0, offset)

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        with self._log.cond:
            parts = self._log.topics.get(topic)
            if parts is None:
                raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
            out: dict[TopicPartition, int | None] = {}
            for p, log in enumerate(parts):
                out[TopicPartition(topic, p)] = next(
                    (i for i, r in enumerate(log) if r[3] >= timestamp_ms), None
                )
            return out

    # -- commits -----------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        refused = []
        with self._log.cond:
            g = self._group
            for tp, offset in offsets.items():
                if g.owner.get(tp) == self._id and self._id in g.members:
                    g.committed[tp] = offset
                else:
                    refused.append(tp)
        if refused:
            raise CommitFailed(f"group {self._group_name}: no longer owns {sorted(refused)}")

    transactional = True

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], outputs: Sequence[Output]
    ) -> None:
        """Under the log's lock: nothing else reads or writes between the outputs and commit."""
        with self._log.cond:
            g = self._group
            refused = [tp for tp in offsets if g.owner.get(tp) != self._id]
            if refused or self._id not in g.members:
                raise CommitFailed(f"group {self._group_name}: no longer owns {sorted(refused)}")
            for out in outputs:  # all or nothing: refuse before anything is appended
                parts = self._log.topics.get(out.topic)
                if out.partition is not None and (parts is None or out.partition >= len(parts)):
                    raise CommitFailed(f"{out.topic} has no partition {out.partition}")
            producer = MemoryProducer(self._broker)
            for out in outputs:
                producer.send(out.topic, out.value, out.key, out.headers, out.partition)
            g.committed.update(offsets)

    def save_state(self, tp: TopicPartition, offset: int, state: str) -> None:
        with self._log.cond:
            g = self._group
            if g.owner.get(tp) != self._id or self._id not in g.members:
                raise CommitFailed(f"group {self._group_name}: no longer owns {tp}")
            g.committed[tp] = offset
            g.states[tp] = state

    def load_state(self, tp: TopicPartition) -> tuple[int | None, str | None]:
        with self._log.cond:
            return self._group.committed.get(tp), self._group.states.get(tp)

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        with self._log.cond:
            return {tp: self._group.committed.get(tp) for tp in tps}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._callbacks is not None and self._owned:
            self._callbacks[1](list(self._owned))
        with self._log.cond:
            g = self._group
            for tp in list(g.owner):
                if g.owner[tp] == self._id:
                    del g.owner[tp]
            if g.members.pop(self._id, None) is not None:
                g.last_seen.pop(self._id, None)
                g.generation += 1
            self._log.cond.notify_all()
        self._owned.clear()
