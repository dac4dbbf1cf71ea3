"""The crash counter: a record that keeps killing the worker ends in the DLQ, not in a loop.

A handler that segfaults, runs out of memory, or calls ``os._exit`` takes the whole worker
down with no exception to catch, so the retry policy never sees it: the record is
redelivered to the next owner, which dies too, forever (the crash loop every peer has).

The counter lives in Redis (the broker itself, or the group's Redis dedup store) so it
survives the dead process and follows the partition to its next owner. It costs one
pipelined write per polled batch in normal operation:

1. Before the records of a poll reach a handler, the poll thread writes, per partition, the
   range it has polled but not committed (``polled = "low high"``).
2. A new owner that finds such a range knows the previous owner may have died inside it.
   Those redelivered records are *suspects*: each is handled alone, one at a time in the
   whole worker, after writing ``o<offset> = n`` (the number of times it was started
   alone), and that field is deleted once it finished.
3. A suspect whose count already reached ``crash_limit`` is not handled again: it goes to
   the DLQ as ``WorkerLost``.

So a killer record costs ``crash_limit + 1`` worker deaths: the first narrows the range down
to single records, each of the next ``crash_limit`` is charged to the record itself. A death
for an unrelated reason (SIGKILL, a deploy) charges nothing but the normal-path range, and an
innocent suspect finishes and clears its field the next time. If the counter's Redis is
unreachable, records are handled as usual and crash counting pauses: it never costs a
record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .logs import get_logger
from .message import TopicPartition

__all__ = ["CrashCounter", "Suspects"]

log = get_logger("streamq.crashes")

_POLLED = b"polled"


@dataclass
class Suspects:
    """Offsets a previous owner polled and may have died on, with their solo-start counts."""

    low: int
    high: int
    counts: dict[int, int] = field(default_factory=dict)

    def count(self, offset: int) -> int | None:
        """None when ``offset`` is not a suspect."""
        if self.low <= offset <= self.high or offset in self.counts:
            return self.counts.get(offset, 0)
        return None


class CrashCounter:
    """Crash bookkeeping for one consumer group, in Redis hashes (one per partition)."""

    def __init__(self, url: str, group: str, limit: int, ttl: float = 7 * 86400.0) -> None:
        import redis

        self.url = url
        self.limit = limit
        self._r: Any = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = f"streamq:crash:{group}:"
        self._ttl_ms = int(ttl * 1000)
        self._quiet_until = 0.0

    def _key(self, tp: TopicPartition) -> str:
        return f"{self._prefix}{tp.topic}:{tp.partition}"

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
            low, high = 0, -1
            counts: dict[int, int] = {}
            for name, value in fields.items():
                if name == _POLLED:
                    low, high = (int(v) for v in value.split())
                elif name.startswith(b"o"):
                    counts[int(name[1:])] = int(value)
            out[tp] = Suspects(low, high, counts)
        return out

    def note_polled(self, ranges: dict[TopicPartition, tuple[int, int]]) -> None:
        """Record what is about to reach handlers; called by the poll thread before it does."""
        if not ranges or not self._usable():
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for tp, (low, high) in ranges.items():
                key = self._key(tp)
                pipe.hset(key, _POLLED, f"{low} {high}")
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
                pipe.hdel(self._key(tp), _POLLED)
            pipe.execute()
        except Exception as exc:
            self._failed("clearing polled ranges", exc)

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
