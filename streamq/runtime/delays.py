"""The delay topic's members: hold each delayed record until it is due, then move it.

Every worker runs a ``DelayMover`` thread. Once the delay topic exists (looked for every
``CHECK_EVERY`` seconds, so an app that never delays pays one metadata call per interval) it
joins the group of the same name. It reads the envelopes (``streamq.delays``) of the
partitions it owns in log order and holds them, ordered by due time. A due record is
published to its topic together with a tombstone for its id in the delay topic, and the
position of its partition, in one ``Backend.commit_transaction`` (a Kafka transaction with
the group's metadata, the fenced Redis script, or memory's lock): all or nothing, and
refused to a member the group has moved on from.

The position committed is the offset of the oldest record still held, so records are moved
out of order but never skipped; a new owner reads again from there, and the tombstones it
meets on the way say which later records were moved already. A tombstone always comes after
its record, so before moving anything from a partition it was given, a member appends a
*barrier* record to it and only moves once it has read that barrier back: by then it has
seen every tombstone written before it owned the partition. So each delayed record reaches
its topic once (read_committed on Kafka), and never before it is due.

A member holds at most ``MAX_HELD`` records per partition and pauses the partition past that
until some were moved: records behind wait. A delay topic is for seconds to hours, not a
calendar of millions of far-future records.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import logs
from ..brokers import in_process
from ..delays import BARRIER, unwrap
from ..errors import BrokerError, CommitFailed, MemberFenced
from ..message import Message, TopicPartition
from ..pipeline import Output
from .scheduler import MAX_WAIT, poll_until

if TYPE_CHECKING:
    from ..brokers.base import Backend, Broker, ProducerBackend, RecordMetadata
    from ..settings import Settings
    from ..stats import Stats

__all__ = ["DelayMover"]

log = logs.get_logger("streamq.delays")

CHECK_EVERY = 10.0  # seconds between looks for the delay topic, until it exists
MAX_HELD = 100_000  # records held per partition before it is paused
MAX_MOVE = 1000  # records moved per transaction


@dataclass
class _Part:
    """One owned partition of the delay topic."""

    barrier: bytes  # the id of the barrier this member appended; b"" once read back
    sent: Future[RecordMetadata] | None = None  # the barrier's
    held: dict[bytes, tuple[int, int, Output]] = field(default_factory=dict)  # id: off, due
    position: int = 0  # the next offset to read
    paused: bool = False
    tombstones: list[bytes] = field(default_factory=list)  # barriers read, to clean up


class DelayMover:
    """One member's part of the delay topic: a thread with its own consumer (module doc)."""

    def __init__(
        self,
        broker: Broker,
        producer: ProducerBackend,
        settings: Settings,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = settings.delay_topic
        self._broker = broker
        self._producer = producer
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._consumer: Backend | None = None
        self._parts: dict[TopicPartition, _Part] = {}
        self._due: list[tuple[int, int, int, bytes]] = []  # (due, partition, offset, id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = threading.Event()
        self.moved = 0
        self._failures: dict[bytes, int] = {}  # id -> moves of it alone that failed
        self._solo_until = 0.0  # monotonic: after a batch failed, move one at a time

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="streamq-delays", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            if not self._wait_for_topic():
                return
            while not self._stop.is_set():
                consumer = self.join()
                try:
                    self._run(consumer)
                except MemberFenced:
                    self._stop.wait(1.0)  # then join again, as a new member
                finally:
                    consumer.close()
                    self._parts.clear()
                    self._due.clear()
        except Exception as exc:
            log.error("delayed records: the mover stopped (%s: %s); another member moves "
                      "them", type(exc).__name__, exc)  # fmt: skip
        finally:
            self.closed.set()

    def _run(self, consumer: Backend) -> None:
        while not self._stop.is_set():
            self.step(poll_until(consumer, 500, self._wait(), self._stop))

    def _wait_for_topic(self) -> bool:
        """Block until the delay topic exists; False if stopped first."""
        while not self._stop.is_set():
            admin = self._broker.admin()
            try:
                if admin.topic_exists(self.topic):
                    return True
            except Exception as exc:
                log.debug("delay topic %s: not looked up (%s)", self.topic, exc)
            finally:
                admin.close()
            self._stop.wait(0.2 if in_process(self._settings.broker) else CHECK_EVERY)
        return False

    def join(self) -> Backend:
        """Join the delay topic's group (``start`` does this once the topic exists)."""
        consumer = self._broker.consumer(self.topic, self._settings)
        consumer.subscribe([self.topic], self._on_assign, self._on_revoke, self._on_revoke)
        self._consumer = consumer
        return consumer

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        if tps:
            log.info("delayed records: this member moves %s[%s] now", self.topic,
                     ",".join(str(tp.partition) for tp in tps))  # fmt: skip
        for tp in tps:
            barrier = b"barrier-" + os.urandom(8).hex().encode()
            self._parts[tp] = part = _Part(barrier)
            self._send_barrier(tp, part)

    def _send_barrier(self, tp: TopicPartition, part: _Part) -> None:
        """Appended now, so it is read back after everything already in the partition."""
        barrier = part.barrier
        part.sent = self._producer.send(tp.topic, b"", barrier, [(BARRIER, barrier)], tp.partition)

    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        if tps:
            log.info("delayed records: this member no longer moves %s[%s]", self.topic,
                     ",".join(str(tp.partition) for tp in tps))  # fmt: skip
        gone = {tp.partition for tp in tps if self._parts.pop(tp, None) is not None}
        if gone:  # the next owner reads these records again (maybe this member, later)
            self._due = [e for e in self._due if e[1] not in gone]
            heapq.heapify(self._due)

    def _wait(self) -> float:
        due = self._due
        while due and not self._is_held(due[0]):
            heapq.heappop(due)  # moved, or its partition is gone
        if not due:
            return MAX_WAIT
        return max(0.0, min(MAX_WAIT, due[0][0] / 1000 - self._clock()))

    def _is_held(self, entry: tuple[int, int, int, bytes]) -> bool:
        part = self._parts.get(TopicPartition(self.topic, entry[1]))
        return part is not None and entry[3] in part.held

    # -- one turn ------------------------------------------------------------------------------

    def step(self, records: list[Message]) -> None:
        for msg in records:
            self._read(msg)
        for tp, part in self._parts.items():
            sent = part.sent
            if part.barrier and sent is not None and sent.done() and sent.exception():
                log.warning("delay topic %s[%d]: the barrier was not written (%s); again",
                            tp.topic, tp.partition, sent.exception())  # fmt: skip
                self._send_barrier(tp, part)
        now = int(self._clock() * 1000)
        moving: list[tuple[TopicPartition, bytes]] = []
        due = self._due
        limit = 1 if time.monotonic() < self._solo_until else MAX_MOVE
        chosen: set[bytes] = set()
        while due and len(moving) < limit and due[0][0] <= now:
            entry = heapq.heappop(due)
            tp = TopicPartition(self.topic, entry[1])
            owned = self._parts.get(tp)
            # a record moves only past its partition's barrier (pushed again then), and once
            # per turn (a failed move pushes a second entry for its id)
            if (owned is not None and not owned.barrier and entry[3] in owned.held
                    and entry[3] not in chosen):  # fmt: skip
                chosen.add(entry[3])
                moving.append((tp, entry[3]))
        if moving or any(p.tombstones for p in self._parts.values()):
            self._move(moving)
        self._flow()

    def _read(self, msg: Message) -> None:
        tp = TopicPartition(msg.topic, msg.partition)
        part = self._parts.get(tp)
        if part is None:
            return
        part.position = msg.offset + 1
        key = msg.key or b""
        if msg.value is None:  # a moved record's tombstone
            part.held.pop(key, None)
            return
        headers = dict(msg.raw_headers or ())
        if BARRIER in headers:
            if headers[BARRIER] == part.barrier:
                part.barrier = b""  # everything before this member's time is read: from now
                for k, (off, due, _) in part.held.items():  # on what it holds may move
                    heapq.heappush(self._due, (due, tp.partition, off, k))
            part.tombstones.append(key)
            return
        found = unwrap(msg)
        if found is None:
            log.error("delay topic %s[%d]: offset %d is no delayed record; skipped", msg.topic,
                      msg.partition, msg.offset)  # fmt: skip
            self._stats.delayed["malformed"] += 1
            part.tombstones.append(key)
            return
        out, due = found
        part.held[key] = (msg.offset, due, out)
        if not part.barrier:  # before the barrier, a later tombstone may still cancel it
            heapq.heappush(self._due, (due, msg.partition, msg.offset, key))

    def _move(self, moving: list[tuple[TopicPartition, bytes]]) -> None:
        assert self._consumer is not None
        outputs = [self._parts[tp].held[key][2] for tp, key in moving]
        cleaned: list[tuple[TopicPartition, bytes]] = [
            (tp, key) for tp, part in self._parts.items() for key in part.tombstones
        ]
        outputs += [Output(tp.topic, None, key, None, tp.partition)
                    for tp, key in (*moving, *cleaned)]  # fmt: skip
        removed: dict[TopicPartition, list[bytes]] = {}
        for tp, key in moving:
            removed.setdefault(tp, []).append(key)
        offsets = {}
        for tp, part in self._parts.items():
            if part.barrier:
                continue
            gone = set(removed.get(tp, ()))
            left = [off for k, (off, _, _) in part.held.items() if k not in gone]
            offsets[tp] = min(left) if left else part.position
        try:
            self._consumer.commit_transaction(offsets, outputs)
        except MemberFenced as exc:
            log.warning("delayed records: this member was fenced (%s); it rejoins", exc)
            raise
        except (CommitFailed, BrokerError) as exc:
            self._failed(moving, exc)
            return
        for tp, keys in removed.items():
            part = self._parts[tp]
            for key in keys:
                part.held.pop(key, None)
        for part in self._parts.values():
            part.tombstones.clear()
        self.moved += len(moving)
        self._stats.delayed["moved"] += len(moving)
        for _, key in moving:
            self._failures.pop(key, None)

    def _failed(self, moving: list[tuple[TopicPartition, bytes]], exc: BaseException) -> None:
        """A refused move is tried again; one record that fails alone waits longer each time.

        A batch that failed is tried again record by record (``_solo``), so one record that
        cannot move (a partition its topic does not have) holds back only itself: it is
        retried with a growing delay (never earlier than it was due) and named in an error.
        """
        now = int(self._clock() * 1000)
        if len(moving) > 1:
            log.warning("delayed records: moving %d failed (%s); trying them one by one",
                        len(moving), exc)  # fmt: skip
            self._solo_until = time.monotonic() + 10.0
        for tp, key in moving:
            off, due, out = self._parts[tp].held[key]
            if len(moving) == 1:
                n = self._failures[key] = self._failures.get(key, 0) + 1
                wait = min(30.0, 0.5 * 2 ** min(n, 10))
                due = max(due, now + round(wait * 1000))
                self._parts[tp].held[key] = (off, due, out)
                log.error("delayed record for %s (%s[%d]@%d) cannot move (%s); trying again "
                          "in %.1fs", out.topic, tp.topic, tp.partition, off, exc,
                          wait)  # fmt: skip
            heapq.heappush(self._due, (due, tp.partition, off, key))

    def _flow(self) -> None:
        assert self._consumer is not None
        for tp, part in self._parts.items():
            if not part.paused and len(part.held) >= MAX_HELD:
                part.paused = True
                self._consumer.pause([tp])
                log.warning("delay topic %s[%d]: %d records held; reading paused until some "
                            "are due", tp.topic, tp.partition, len(part.held))  # fmt: skip
            elif part.paused and len(part.held) < MAX_HELD // 2:
                part.paused = False
                self._consumer.resume([tp])
