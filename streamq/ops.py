"""Operator views of a log: bounds, times, group positions and members, ranged reads.

The replay, offsets, lag and tail commands are written once against ``LogView``; one class
per broker answers in that broker's terms:

- Kafka: a private, never-subscribed consumer (its own throwaway group id, auto commit off)
  for watermarks, times and ranged reads by manual assignment; the admin client for group
  members; a consumer with the group's id only to read or write its committed offsets.
- Redis Streams: XRANGE/XREVRANGE for bounds and ranges, ``<ms>-0`` IDs for times, XINFO
  GROUPS for the group's position and pending count, the member registry for members, and
  XGROUP SETID for resets. Offsets are streamq's integer form of entry IDs.

An end is always "one past the last offset" and is found from offsets seen, never by
waiting for quiet: a read stops once it handled the record just before the end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .credentials import redact_url
from .errors import BrokerUnavailable, ConfigError, UnknownTopicOrPartition
from .message import Message, TopicPartition
from .settings import Settings

__all__ = ["GroupPosition", "LogView", "open_view"]


@dataclass
class GroupPosition:
    """Where a group stands on one partition."""

    partition: int
    committed: int | None  # the next offset the group will read; None: nothing committed
    end: int
    pending: int | None = None  # Redis: delivered, not acknowledged
    records_behind: int | None = None  # where offsets are not dense (Redis): counted

    @property
    def lag(self) -> int | None:
        """Records between the committed position and the end."""
        if self.records_behind is not None:
            return self.records_behind
        return None if self.committed is None else max(0, self.end - self.committed)


class LogView(Protocol):
    def partitions(self, topic: str) -> list[int]:
        """Partition numbers of ``topic``; UnknownTopicOrPartition if there is no such topic."""

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition: (first offset, one past the last); equal when empty."""

    def offsets_for_time(self, topic: str, ms: int) -> dict[int, int | None]:
        """Per partition: the first offset at or after ``ms``; None when there is none."""

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        """Records in [start, end) of one partition."""

    def last_n_start(self, topic: str, partition: int, n: int) -> int:
        """The offset of the ``n``-th record from the end (the first offset if fewer)."""

    def positions(self, group: str, topic: str) -> list[GroupPosition]: ...

    def group_topics(self, group: str) -> list[str]:
        """Topics on which ``group`` has a position."""

    def members(self, group: str) -> list[str]:
        """Active members of ``group``, for refusing a reset under them."""

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None: ...

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""

    def groups(self) -> list[str]:
        """Consumer groups the broker knows of."""

    def owners(self, group: str, topic: str) -> dict[int, str]:
        """Partition -> the member that owns it now (absent: nobody, or the broker won't say)."""

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
        """Batches of records in [start, end) per partition; end None follows forever.

        An empty batch means nothing arrived within ``timeout``; the iterator ends once every
        bounded partition has been read to its end.
        """

    def close(self) -> None: ...


def open_view(url: str, settings: Settings) -> LogView:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "kafka":
        return KafkaView(url, settings)
    if scheme in ("redis", "rediss"):
        return RedisView(url, settings)
    if scheme == "memory":
        raise ConfigError(
            "memory:// lives inside one process, so another process cannot replay, reset, "
            "tail or measure it; use a kafka:// or redis:// broker"
        )
    raise ConfigError(f"broker: unknown URL scheme in {redact_url(url)!r}")


class KafkaView:
    def __init__(self, url: str, settings: Settings) -> None:
        import confluent_kafka as ck

        from .brokers.kafka import KafkaBroker, wait_for_broker

        self._ck = ck
        self._broker = KafkaBroker(url, settings)
        self._settings = settings
        self._config = self._broker.client_config()
        self._reader = ck.Consumer(
            self._config
            | {
                "group.id": f"streamq-ops-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }
        )
        wait_for_broker(lambda t: self._reader.list_topics(timeout=t), self._broker.bootstrap,
                        settings.broker_timeout)  # fmt: skip

    def _translate(self, exc: Exception, what: str) -> Exception:
        from .brokers.kafka import translate

        return translate(exc, what)

    def partitions(self, topic: str) -> list[int]:
        try:
            meta = self._reader.list_topics(topic, timeout=self._settings.broker_timeout)
        except self._ck.KafkaException as exc:
            raise self._translate(exc, f"metadata of {topic}") from None
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
        return sorted(found.partitions)

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        ck = self._ck
        out = {}
        for p in self.partitions(topic):
            low, high = self._reader.get_watermark_offsets(ck.TopicPartition(topic, p), 10)
            out[p] = (low, high)
        return out

    def offsets_for_time(self, topic: str, ms: int) -> dict[int, int | None]:
        ck = self._ck
        parts = [ck.TopicPartition(topic, p, ms) for p in self.partitions(topic)]
        try:
            found = self._reader.offsets_for_times(parts, timeout=10)
        except ck.KafkaException as exc:
            raise self._translate(exc, "offsets_for_times") from None
        bounds = self.bounds(topic)
        out: dict[int, int | None] = {}
        for tp in found:
            end = bounds[tp.partition][1]
            # -1 is "no record at or after"; some brokers answer with an offset past the end
            out[tp.partition] = None if tp.offset < 0 or tp.offset >= end else tp.offset
        return out

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        return max(0, end - start)  # offsets are dense, except in compacted topics

    def last_n_start(self, topic: str, partition: int, n: int) -> int:
        low, end = self.bounds(topic)[partition]
        return max(low, end - n)

    def _group_consumer(self, group: str) -> Any:
        return self._ck.Consumer(self._config | {"group.id": group, "enable.auto.commit": False})

    def positions(self, group: str, topic: str) -> list[GroupPosition]:
        ck = self._ck
        bounds = self.bounds(topic)
        consumer = self._group_consumer(group)
        try:
            found = consumer.committed([ck.TopicPartition(topic, p) for p in bounds], timeout=20)
        except ck.KafkaException as exc:
            raise self._translate(exc, f"committed offsets of {group}") from None
        finally:
            consumer.close()
        return [
            GroupPosition(
                tp.partition, tp.offset if tp.offset >= 0 else None, bounds[tp.partition][1]
            )
            for tp in found
        ]

    def group_topics(self, group: str) -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config)
        try:
            from confluent_kafka import ConsumerGroupTopicPartitions

            futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            result = futures[group].result(timeout=20)
        except self._ck.KafkaException as exc:
            raise self._translate(exc, f"offsets of group {group}") from None
        return sorted({tp.topic for tp in result.topic_partitions or [] if tp.offset >= 0})

    def members(self, group: str) -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config)
        try:
            result = admin.describe_consumer_groups([group])[group].result(timeout=20)
        except self._ck.KafkaException as exc:
            raise self._translate(exc, f"describe group {group}") from None
        return [_member_name(m) for m in result.members or []]

    def topics(self) -> dict[str, int]:
        try:
            meta = self._reader.list_topics(timeout=self._settings.broker_timeout)
        except self._ck.KafkaException as exc:
            raise self._translate(exc, "metadata") from None
        return {
            name: len(t.partitions)
            for name, t in meta.topics.items()
            if t.error is None and not name.startswith("__")
        }

    def groups(self) -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config)
        try:
            result = admin.list_consumer_groups().result(timeout=20)
        except self._ck.KafkaException as exc:
            raise self._translate(exc, "list groups") from None
        return sorted(g.group_id for g in result.valid if not g.group_id.startswith("streamq-ops-"))

    def owners(self, group: str, topic: str) -> dict[int, str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._config)
        try:
            result = admin.describe_consumer_groups([group])[group].result(timeout=20)
        except self._ck.KafkaException:
            return {}  # not allowed to describe the group (ACLs): owners unknown
        out: dict[int, str] = {}
        for m in result.members or []:
            for tp in getattr(m.assignment, "topic_partitions", None) or []:
                if tp.topic == topic:
                    out[tp.partition] = _member_name(m)
        return out

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None:
        ck = self._ck
        consumer = self._group_consumer(group)
        try:
            parts = [ck.TopicPartition(topic, p, o) for p, o in positions.items()]
            result = consumer.commit(offsets=parts, asynchronous=False)
        except ck.KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code in _group_active_codes():
                # The coordinator accepts commits from outside the group only while it is
                # empty; brokers that list no members still refuse here.
                raise ConfigError(
                    f"group {group!r} has active members (the broker refused the reset: "
                    f"{exc.args[0].str()}); stop them first"
                ) from None
            raise self._translate(exc, f"commit offsets of {group}") from None
        finally:
            consumer.close()
        failed = [f"{tp.partition}: {tp.error}" for tp in result or [] if tp.error]
        if failed:
            raise BrokerUnavailable(f"setting offsets of {group} failed: {'; '.join(failed)}")

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
        from .brokers.kafka import to_message

        ck = self._ck
        todo = {p: r for p, r in ranges.items() if r[1] is None or r[0] < r[1]}
        if not todo:
            return
        bounded = {p for p, (_, end) in todo.items() if end is not None}
        self._reader.assign([ck.TopicPartition(topic, p, start) for p, (start, _) in todo.items()])
        idle_since = time.monotonic()
        try:
            while True:
                raw: list[Any] = self._reader.consume(500, timeout)
                batch: list[Message] = []
                for m in raw:
                    if m.error() is not None:
                        continue
                    p, off = m.partition(), m.offset()
                    end = todo[p][1]
                    if end is not None and off >= end:
                        continue
                    batch.append(to_message(m))
                    if end is not None and off >= end - 1:
                        bounded.discard(p)
                        self._reader.pause([ck.TopicPartition(topic, p)])
                if batch:
                    idle_since = time.monotonic()
                elif bounded and time.monotonic() - idle_since > self._settings.broker_timeout:
                    raise BrokerUnavailable(
                        f"reading {topic}: no records for {self._settings.broker_timeout:.0f}s "
                        f"before the end of partitions {sorted(bounded)}"
                    )
                yield batch
                if not bounded and all(end is not None for _, end in todo.values()):
                    return
        finally:
            self._reader.unassign()

    def close(self) -> None:
        self._reader.close()


def _group_active_codes() -> tuple[int, ...]:
    from confluent_kafka import KafkaError

    return (
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
    )


class RedisView:
    def __init__(self, url: str, settings: Settings) -> None:
        from .brokers.redis_streams import RedisBroker, wait_for_redis

        self._broker = RedisBroker(url, settings)
        self._r: Any = self._broker.client()
        wait_for_redis(self._r, self._broker.client_url, settings.broker_timeout)

    def partitions(self, topic: str) -> list[int]:
        return list(range(self._broker.partitions(self._r, topic, create=False)))

    def _key(self, topic: str, p: int) -> str:
        return f"{topic}:{p}"

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        from .brokers.redis_streams import id_to_offset

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
        from .brokers.redis_streams import id_to_offset

        out: dict[int, int | None] = {}
        for p in self.partitions(topic):
            found = self._r.xrange(self._key(topic, p), f"{ms}-0", "+", count=1)
            out[p] = id_to_offset(found[0][0]) if found else None
        return out

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        from .brokers.redis_streams import offset_to_id

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
        from .brokers.redis_streams import id_to_offset

        found = self._r.xrevrange(self._key(topic, partition), "+", "-", count=max(1, n))
        if not found:
            return 0
        if n == 0:
            return id_to_offset(found[0][0]) + 1
        return id_to_offset(found[-1][0])

    def _group_info(self, group: str, topic: str, p: int) -> dict[str, Any] | None:
        from redis.exceptions import ResponseError

        try:
            infos: Any = self._r.xinfo_groups(self._key(topic, p))
        except ResponseError:  # no such stream yet
            return None
        for info in infos:
            name = info["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                return dict(info)
        return None

    def positions(self, group: str, topic: str) -> list[GroupPosition]:
        from .brokers.redis_streams import id_to_offset

        out = []
        for p, (_, end) in self.bounds(topic).items():
            info = self._group_info(group, topic, p)
            if info is None:
                out.append(GroupPosition(p, None, end))
                continue
            last = id_to_offset(info["last-delivered-id"])
            position = last + 1 if last else 0
            behind = info.get("lag")  # Redis >= 7; None when it cannot tell (after trims)
            if behind is None:
                behind = self.count(topic, p, position, end)
            out.append(GroupPosition(p, position, end, int(info["pending"]), int(behind)))
        return out

    def group_topics(self, group: str) -> list[str]:
        from .brokers.redis_streams import RedisAdmin

        topics = RedisAdmin(self._broker).list_topics()
        return sorted(
            t for t, n in topics.items() if any(self._group_info(group, t, p) for p in range(n))
        )

    def topics(self) -> dict[str, int]:
        from .brokers.redis_streams import RedisAdmin

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

    def owners(self, group: str, topic: str) -> dict[int, str]:
        from .brokers.redis_streams import lease_key

        parts = self.partitions(topic)
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
        for key in self._r.scan_iter(match=f"streamq:members:{group}:*", count=500):
            out.extend(m.decode() for m in self._r.zrangebyscore(key, now_ms, "+inf"))
        return sorted(set(out))

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None:
        """XGROUP SETID to just before each position, and forget the pending entries.

        The pending list is cleared because a reset redefines what is done: entries below the
        new position are skipped on purpose, and those at or above it are delivered again as
        new entries.
        """
        from redis.exceptions import ResponseError

        from .brokers.redis_streams import offset_to_id

        for p, position in positions.items():
            key = self._key(topic, p)
            last = offset_to_id(position - 1) if position > 0 else "0-0"
            try:
                self._r.xgroup_setid(key, group, last)
            except ResponseError:  # the group does not exist on this stream yet
                self._r.xgroup_create(key, group, last, mkstream=True)
            # the crash counter's in-flight range belongs to the old position
            self._r.delete(f"streamq:crash:{group}:{topic}:{p}")
            while True:
                pending = self._r.xpending_range(key, group, "-", "+", 1000)
                if not pending:
                    break
                self._r.xack(key, group, *[e["message_id"] for e in pending])

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
        from .brokers.redis_streams import entry_to_message, offset_to_id

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

    def close(self) -> None:
        self._r.close()


def _member_name(member: Any) -> str:
    """As ``members`` lists it: every worker of a group shares its client id and host."""
    return f"{member.client_id}@{member.host} ({member.member_id})"
