"""The operator's view of Redis Streams: bounds, times, group positions, ranged reads.

XRANGE/XREVRANGE for bounds and ranges, ``<ms>-0`` IDs for times, XINFO GROUPS (through
``admin.group_infos``) for the group's position and pending count, the member registry for
members, the leases for owners, and XGROUP SETID for resets. Offsets are streamq's integer
form of entry IDs (``entries``); operators see and type the entry IDs themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...crashes import crash_key
from ...message import Message, TopicPartition
from ..view import GroupPosition, LogView
from .admin import RedisAdmin, group_infos
from .client import ResponseError
from .entries import entry_to_message, id_to_offset, offset_from_text, offset_to_id
from .errors import wait_for_redis
from .keys import lease_key, members_key, members_pattern, share_key, stream_key

if TYPE_CHECKING:
    from .config import RedisBroker

__all__ = ["RedisView"]


class RedisView(LogView):
    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r: Any = broker.client()
        try:
            wait_for_redis(self._r, broker.client_url, broker.settings.broker_timeout)
        except BaseException:
            self._r.close()
            raise

    def partitions(self, topic: str) -> list[int]:
        return list(range(self._broker.partitions(self._r, topic, create=False)))

    def _key(self, topic: str, p: int) -> str:
        return stream_key(TopicPartition(topic, p))

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        out = {}
        for p in self.partitions(topic):
            first = self._r.xrange(self._key(topic, p), "-", "+", count=1)
            last = self._r.xrevrange(self._key(topic, p), "+", "-", count=1)
            if not first:
                out[p] = (0, 0)
            else:
                out[p] = (id_to_offset(first[0][0]), id_to_offset(last[0][0]) + 1)
        return out

    def offsets_for_time(self, topic: str, ms: int) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        for p in self.partitions(topic):
            found = self._r.xrange(self._key(topic, p), f"{ms}-0", "+", count=1)
            out[p] = id_to_offset(found[0][0]) if found else None
        return out

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        if start >= end:
            return 0
        key, lo, hi = self._key(topic, partition), offset_to_id(start), offset_to_id(end - 1)
        n = 0
        while True:
            page = self._r.xrange(key, lo, hi, count=10_000)
            n += len(page)
            if len(page) < 10_000:
                return n
            lo = "(" + page[-1][0].decode()

    def last_n_start(self, topic: str, partition: int, n: int) -> int:
        found = self._r.xrevrange(self._key(topic, partition), "+", "-", count=max(1, n))
        if not found:
            return 0
        if n == 0:
            return id_to_offset(found[0][0]) + 1
        return id_to_offset(found[-1][0])

    def positions(self, group: str, topic: str) -> list[GroupPosition]:
        bounds = self.bounds(topic)
        tps = [TopicPartition(topic, p) for p in bounds]
        out = []
        for tp, info in zip(tps, group_infos(self._r, group, tps), strict=True):
            end = bounds[tp.partition][1]
            if info is None:
                out.append(GroupPosition(tp.partition, None, end))
                continue
            last = id_to_offset(info["last-delivered-id"])
            position = last + 1 if last else 0
            behind = info.get("lag")  # Redis >= 7; None when it cannot tell (after trims)
            if behind is None:
                behind = self.count(topic, tp.partition, position, end)
            out.append(
                GroupPosition(tp.partition, position, end, int(info["pending"]), int(behind))
            )
        return out

    def group_topics(self, group: str) -> list[str]:
        topics = RedisAdmin(self._broker).list_topics()
        return sorted(
            t
            for t, n in topics.items()
            if any(group_infos(self._r, group, [TopicPartition(t, p) for p in range(n)]))
        )

    def topics(self) -> dict[str, int]:
        return RedisAdmin(self._broker).list_topics()

    def groups(self) -> list[str]:
        found: set[str] = set()
        for topic, n in self.topics().items():
            for p in range(n):
                try:
                    infos: Any = self._r.xinfo_groups(self._key(topic, p))
                except Exception:  # noqa: S112 - no stream yet: no groups on it
                    continue
                for info in infos:
                    name = info["name"]
                    found.add(name.decode() if isinstance(name, bytes) else name)
        return sorted(found)

    def group_type(self, group: str) -> str:
        return "share" if self._r.exists(share_key(group)) else "classic"

    def owners(self, group: str, topic: str) -> dict[int, str]:
        parts = self.partitions(topic)
        if self.group_type(group) == "share":
            now_ms = int(time.time() * 1000)
            readers = self._r.zcount(members_key(group, topic), now_ms, "+inf")
            return {p: f"shared by {readers}" for p in parts} if readers else {}
        tokens = self._r.mget([lease_key(group, TopicPartition(topic, p)) for p in parts])
        # a lease token is "<member id>:<random>"
        return {
            p: token.decode().rsplit(":", 1)[0]
            for p, token in zip(parts, tokens, strict=True)
            if token is not None
        }

    def members(self, group: str) -> list[str]:
        now_ms = int(time.time() * 1000)
        out: list[str] = []
        for key in self._r.scan_iter(match=members_pattern(group), count=500):
            out.extend(m.decode() for m in self._r.zrangebyscore(key, now_ms, "+inf"))
        return sorted(set(out))

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None:
        """XGROUP SETID to just before each position, and forget the pending entries.

        The pending list is cleared because a reset redefines what is done: entries below the
        new position are skipped on purpose, and those at or above it are delivered again as
        new entries.
        """
        for p, position in positions.items():
            key = self._key(topic, p)
            last = offset_to_id(position - 1) if position > 0 else "0-0"
            try:
                self._r.xgroup_setid(key, group, last)
            except ResponseError:  # the group does not exist on this stream yet
                self._r.xgroup_create(key, group, last, mkstream=True)
            # the crash counter's in-flight range belongs to the old position
            self._r.delete(crash_key(group, topic, p))
            while True:
                pending = self._r.xpending_range(key, group, "-", "+", 1000)
                if not pending:
                    break
                self._r.xack(key, group, *[e["message_id"] for e in pending])

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
        last: dict[str, str] = {}
        for p, (start, end) in sorted(ranges.items()):
            key = self._key(topic, p)
            last[key] = offset_to_id(start - 1) if start > 0 else "0-0"
            if end is not None and start >= end:
                continue
            lo = offset_to_id(start)
            hi = offset_to_id(end - 1) if end is not None else "+"
            while True:
                page: Any = self._r.xrange(key, lo, hi, count=1000)
                yield [entry_to_message(topic, p, eid, fields) for eid, fields in page]
                if page:
                    last[key] = page[-1][0].decode()
                if len(page) < 1000:
                    break
                lo = "(" + page[-1][0].decode()
        follow = {self._key(topic, p): last[self._key(topic, p)]
                  for p, (_, end) in ranges.items() if end is None}  # fmt: skip
        while follow:
            found: Any = self._r.xread(follow, count=1000, block=max(1, int(timeout * 1000)))
            batch = []
            for key, entries in found or []:
                name = key.decode() if isinstance(key, bytes) else key
                p = int(name.rsplit(":", 1)[1])
                for eid, fields in entries:
                    batch.append(entry_to_message(topic, p, eid, fields))
                if entries:
                    follow[name] = entries[-1][0].decode()
            yield batch

    def read_topic(self, topic: str) -> Iterator[Message]:
        """XRANGE in pages, partition after partition, to each stream's end as it is read."""
        for p in self.partitions(topic):
            start = "-"
            while True:
                page: Any = self._r.xrange(self._key(topic, p), start, "+", count=1000)
                for entry_id, fields in page:
                    yield entry_to_message(topic, p, entry_id, fields)
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0].decode()

    def offset_text(self, offset: int) -> str:
        return offset_to_id(offset)

    def offset_from_text(self, text: str) -> int:
        return offset_from_text(text)

    def close(self) -> None:
        self._r.close()
