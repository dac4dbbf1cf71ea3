"""The crash counter: a record that keeps killing the worker ends in the DLQ, not in a loop.

A handler that segfaults, runs out of memory, or calls ``os._exit`` takes the whole worker
down with no exception to catch, so the retry policy never sees it: the record is
redelivered to the next owner, which dies too, forever (the crash loop every peer has).

The counter lives in Redis (the broker itself, or the group's Redis dedup store) so it
survives the dead process and follows the partition to its next owner. It costs one
pipelined write per polled batch in normal operation:

1. Before the records of a poll reach a handler, the poll thread writes, per partition, the
   range it has polled but not finished, and how many records it holds
   (``polled = "low high count"``: offsets are not dense on Redis Streams).
2. A new owner that finds such a range knows the previous owner may have died inside it,
   but after an ordinary SIGKILL (a deploy, a node drain, an OOM kill of a neighbour) it
   holds nothing but innocent records, up to ``max_in_flight`` of them. So the range is
   handled at the usual speed, in *chunks* of ``CHUNK`` records, each noted before its
   first handler starts (``c<first> = last``) and un-noted when it finished: a death now
   leaves behind the one chunk per lane that was running.
3. A record inside such a chunk, or inside a range of at most ``SOLO_MAX`` records (too
   small to be worth chunking), is a *suspect*: handled alone, one at a time in the whole
   worker, after writing ``o<offset> = n`` (the number of times it was started alone), and
   that field is deleted once it finished.
4. A suspect whose count already reached ``crash_limit`` is not handled again: it goes to
   the DLQ as ``WorkerLost``.

So a killer record costs ``crash_limit + 2`` worker deaths (``crash_limit + 1`` when the
range it died in held at most ``SOLO_MAX`` records): the first gives the range, the second
the chunk, each of the next ``crash_limit`` is charged to the record itself. A death for an
unrelated reason charges nothing but the range or the chunk, which only costs speed: an
innocent suspect finishes and clears its field the next time. If the counter's Redis is
unreachable, records are handled as usual and crash counting pauses: it never costs a
record. Markers of records that were finished but never cleared (a dedup store skipped
them) are harmless, since a group never reads below its committed position again, and
expire with the key (``dedup_ttl``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .credentials import redact_url, redis_client
from .logs import get_logger
from .message import Message, TopicPartition

__all__ = ["CHUNK", "SOLO_MAX", "CrashCounter", "Suspects", "crash_key"]

log = get_logger("streamq.crashes")

_POLLED = b"polled"


def crash_key(group: str, topic: str, partition: int) -> str:
    """The Redis hash of one partition's crash bookkeeping (``offsets reset`` clears it)."""
    return f"streamq:crash:{group}:{topic}:{partition}"


SOLO_MAX = 64  # a dead owner's range this small goes one record at a time straight away
CHUNK = 256  # a bigger one is handled in chunks of this many records, each noted in Redis

Kind = Literal["normal", "chunk", "solo"]


@dataclass
class Suspects:
    """What the previous owners of a partition left behind when they died."""

    low: int  # the range a dead owner had polled but not finished (empty when low > high)
    high: int
    solo: list[tuple[int, int]] = field(default_factory=list)  # chunks running at a death
    counts: dict[int, int] = field(default_factory=dict)  # solo starts of single records
    records: int = -1  # in low..high; -1: count the offsets (they are dense on Kafka)
    in_chunks: int = 0  # records planned so far, for the line that says recovery is over
    alone: int = 0

    @property
    def chunked(self) -> bool:
        records = self.records if self.records >= 0 else self.high - self.low + 1
        return records > SOLO_MAX

    @property
    def last(self) -> int:
        """The highest offset that is still suspect: past it, the partition is back to normal."""
        ends = [b for _, b in self.solo]
        ends.extend(self.counts)
        if self.high >= self.low:
            ends.append(self.high)
        return max(ends, default=-1)

    def plan_text(self, at: Callable[[int], str] = str) -> str:
        """How a new owner goes through this: said once, when it is assigned."""
        parts = []
        if self.chunked:
            parts.append(f"those in chunks of up to {CHUNK} records")
        elif self.high >= self.low:
            parts.append("those one at a time")
        if self.solo:
            ranges = ", ".join(f"{at(a)}..{at(b)}" for a, b in self.solo)
            parts.append(f"offsets {ranges} (running when a worker died) one at a time")
        if self.counts:
            parts.append(f"{len(self.counts)} record(s) that were running alone one at a time")
        return "; ".join(parts) or "nothing"

    def starts(self, offset: int) -> int | None:
        """How often ``offset`` was started alone by a worker that died; None: not a suspect."""
        n = self.counts.get(offset)
        if n is not None:
            return n
        if self.low <= offset <= self.high and not self.chunked:
            return 0
        for a, b in self.solo:
            if a <= offset <= b:
                return 0
        return None

    def plan(self, msgs: list[Message], chunk: int = CHUNK) -> list[tuple[Kind, list[Message]]]:
        """Cut one polled partition batch, in order, into normal runs, chunks and suspects."""
        out: list[tuple[Kind, list[Message]]] = []
        run: list[Message] = []
        kind: Kind = "normal"
        low, high, chunked = self.low, self.high, self.chunked
        for msg in msgs:
            offset = msg.offset
            n = self.starts(offset)
            if n is not None:
                if run:
                    out.append((kind, run))
                    run = []
                out.append(("solo", [msg]))
                self.alone += 1
                continue
            this: Kind = "chunk" if chunked and low <= offset <= high else "normal"
            if run and (this != kind or (this == "chunk" and len(run) >= chunk)):
                out.append((kind, run))
                run = []
            kind = this
            run.append(msg)
            self.in_chunks += this == "chunk"
        if run:
            out.append((kind, run))
        return out


class CrashCounter:
    """Crash bookkeeping for one consumer group, in Redis hashes (one per partition)."""

    def __init__(
        self, url: str, group: str, limit: int, ttl: float = 7 * 86400.0,
        password: str | None = None,
    ) -> None:  # fmt: skip
        self.url = redact_url(url)  # for log lines
        self.limit = limit
        # Generous: a slow answer (an fsync-always Redis on a busy disk) that timed out would
        # pause counting, and a death in that pause costs the killer an extra restart.
        self._r: Any = redis_client(url, password, socket_timeout=5.0, socket_connect_timeout=2.0)
        self._group = group
        self._ttl_ms = int(ttl * 1000)
        self._quiet_until = 0.0
        self._mine: dict[TopicPartition, set[int]] = {}  # chunks noted by this worker

    def _key(self, tp: TopicPartition) -> str:
        return crash_key(self._group, tp.topic, tp.partition)

    def load(self, tps: list[TopicPartition]) -> dict[TopicPartition, Suspects]:
        """What the previous owners of ``tps`` left behind: one round trip on assignment."""
        if not tps or not self._usable():
            return {}
        try:
            pipe = self._r.pipeline(transaction=False)
            for tp in tps:
                pipe.hgetall(self._key(tp))
            found = pipe.execute()
        except Exception as exc:
            self._failed("reading", exc)
            return {}
        out: dict[TopicPartition, Suspects] = {}
        for tp, fields in zip(tps, found, strict=True):
            if not fields:
                continue
            low, high, records = 0, -1, 0
            solo: list[tuple[int, int]] = []
            counts: dict[int, int] = {}
            for name, value in fields.items():
                if name == _POLLED:
                    low, high, *n = (int(v) for v in value.split())
                    records = n[0] if n else high - low + 1  # written before it was counted
                elif name.startswith(b"o"):
                    counts[int(name[1:])] = int(value)
                elif name.startswith(b"c"):
                    solo.append((int(name[1:]), int(value)))
            out[tp] = Suspects(low, high, sorted(solo), counts, records=records)
        return out

    def note_polled(self, ranges: dict[TopicPartition, tuple[int, int, int]]) -> None:
        """Record what is about to reach handlers: first and last offset, how many records.

        Called by the poll thread before any of them can start.
        """
        if not ranges or not self._usable():
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for tp, (low, high, records) in ranges.items():
                key = self._key(tp)
                pipe.hset(key, _POLLED, f"{low} {high} {records}")
                pipe.pexpire(key, self._ttl_ms)
            pipe.execute()
        except Exception as exc:
            self._failed("recording polled ranges", exc)

    def clear(self, tps: list[TopicPartition]) -> None:
        """Everything polled from ``tps`` finished and was committed: nothing to suspect.

        Called after a graceful revoke or stop, so the next owner starts at full speed
        instead of handling the last polled batch one record at a time.
        """
        if not tps or not self._usable():
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for tp in tps:
                # and the chunks this worker noted: a revoke may have stopped one mid-way
                pipe.hdel(self._key(tp), _POLLED, *(f"c{c}" for c in self._mine.pop(tp, ())))
            pipe.execute()
        except Exception as exc:
            self._failed("clearing polled ranges", exc)

    def mark(self, tp: TopicPartition, first: int, last: int) -> None:
        """Note a chunk before its first handler starts: if the worker dies now, it shows."""
        if not self._usable():
            return
        try:
            self._r.hset(self._key(tp), f"c{first}", last)
            self._mine.setdefault(tp, set()).add(first)
        except Exception as exc:
            self._failed("noting a chunk", exc)

    def unmark(self, tp: TopicPartition, first: int) -> None:
        """The chunk finished: nobody died in it."""
        if not self._usable():
            return
        try:
            self._r.hdel(self._key(tp), f"c{first}")
            self._mine.get(tp, set()).discard(first)
        except Exception as exc:
            self._failed("clearing a chunk", exc)

    def begin(self, tp: TopicPartition, offset: int, count: int) -> None:
        """Charge a suspect before its handler starts: if the worker dies now, it counts."""
        if not self._usable():
            return
        try:
            self._r.hset(self._key(tp), f"o{offset}", count)
        except Exception as exc:
            self._failed("charging a suspect", exc)

    def end(self, tp: TopicPartition, offset: int) -> None:
        """The suspect finished (handled or dead-lettered): it killed nobody this time."""
        if not self._usable():
            return
        try:
            self._r.hdel(self._key(tp), f"o{offset}")
        except Exception as exc:
            self._failed("clearing a suspect", exc)

    def _usable(self) -> bool:
        return time.monotonic() >= self._quiet_until

    def _failed(self, what: str, exc: Exception) -> None:
        self._quiet_until = time.monotonic() + 5.0
        log.warning(
            "crash counter at %s: %s failed (%s); records are handled as usual, but a record "
            "that kills the worker now is not counted; retrying in 5s",
            self.url, what, exc,
        )  # fmt: skip


def counter_url(settings_store: str | None, broker_url: str, dedup_urls: list[str]) -> str | None:
    """Where the crash counter lives: the setting, else the Redis broker, else a Redis dedup."""
    if settings_store:
        return settings_store
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    return dedup_urls[0] if dedup_urls else None
