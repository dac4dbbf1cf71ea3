"""The operator's view of a Kafka cluster: bounds, times, group positions, ranged reads.

A private, never-subscribed consumer (its own throwaway group id, auto commit off) answers
watermarks and times and reads ranges by manual assignment; the admin client lists groups
and members; a consumer with the group's id is made only to read or write its committed
offsets. Offsets are Kafka's own: dense, except in compacted topics.

Share groups (KIP-932) are invisible to librdkafka's admin API; ``wire.ShareWire`` reads
them: a share group's position on a partition is its start offset (every record below it is
done with), its members all read every partition, and its start offsets are not moved here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...errors import BrokerUnavailable, ConfigError, UnknownTopicOrPartition
from ...logs import get_logger
from ...message import Message
from ..view import GroupPosition, LogView
from .client import AdminClient, ConsumerGroupTopicPartitions, KafkaError, ck, to_message
from .errors import translate, wait_for_broker
from .wire import ShareGroup, ShareWire

if TYPE_CHECKING:
    from .config import KafkaBroker

__all__ = ["KafkaView"]

log = get_logger("streamq.kafka")

# A reset refused with these: the group has members.
_GROUP_ACTIVE = (
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
)


class KafkaView(LogView):
    def __init__(self, broker: KafkaBroker) -> None:
        settings = broker.settings
        self._broker = broker
        self._settings = settings
        self._config = broker.client_config()
        self._reader = ck.Consumer(
            self._config
            | {
                "group.id": f"streamq-ops-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }
        )
        try:
            wait_for_broker(lambda t: self._reader.list_topics(timeout=t), broker.bootstrap,
                            settings.broker_timeout)  # fmt: skip
        except BaseException:
            self._reader.close()
            raise
        self._wire = ShareWire(broker.bootstrap, broker.passthrough, settings.broker_timeout)
        self._shares: dict[str, ShareGroup | None] = {}

    def share_group(self, group: str) -> ShareGroup | None:
        """``group`` as a share group, or None when it is none (asked once per view)."""
        if group not in self._shares:
            try:
                self._shares[group] = self._wire.describe(group)
            except ConfigError as exc:
                if not self._wire.sasl:
                    raise
                log.warning("%s (group %s read as a classic group)", exc, group)
                self._shares[group] = None
        return self._shares[group]

    def partitions(self, topic: str) -> list[int]:
        try:
            meta = self._reader.list_topics(topic, timeout=self._settings.broker_timeout)
        except ck.KafkaException as exc:
            raise translate(exc, f"metadata of {topic}") from None
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
        return sorted(found.partitions)

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        out = {}
        for p in self.partitions(topic):
            low, high = self._reader.get_watermark_offsets(ck.TopicPartition(topic, p), 10)
            out[p] = (low, high)
        return out

    def offsets_for_time(self, topic: str, ms: int) -> dict[int, int | None]:
        parts = [ck.TopicPartition(topic, p, ms) for p in self.partitions(topic)]
        try:
            found = self._reader.offsets_for_times(parts, timeout=10)
        except ck.KafkaException as exc:
            raise translate(exc, "offsets_for_times") from None
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
        return ck.Consumer(self._config | {"group.id": group, "enable.auto.commit": False})

    def positions(self, group: str, topic: str) -> list[GroupPosition]:
        bounds = self.bounds(topic)
        share = self.share_group(group)
        if share is not None:  # the start offset: the lag counts records in flight too
            return [
                GroupPosition(p, share.start.get((topic, p)), end) for p, (_, end) in bounds.items()
            ]
        consumer = self._group_consumer(group)
        try:
            found = consumer.committed([ck.TopicPartition(topic, p) for p in bounds], timeout=20)
        except ck.KafkaException as exc:
            raise translate(exc, f"committed offsets of {group}") from None
        finally:
            consumer.close()
        return [
            GroupPosition(
                tp.partition, tp.offset if tp.offset >= 0 else None, bounds[tp.partition][1]
            )
            for tp in found
        ]

    def group_topics(self, group: str) -> list[str]:
        admin = AdminClient(self._config)
        try:
            futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            result = futures[group].result(timeout=20)
        except ck.KafkaException as exc:
            raise translate(exc, f"offsets of group {group}") from None
        found = {tp.topic for tp in result.topic_partitions or [] if tp.offset >= 0}
        share = None if found else self.share_group(group)
        if share is not None:  # a partition has a start offset once its records were read
            found = {t for t, _ in share.start} | {t for a in share.members.values() for t in a}
        return sorted(found)

    def members(self, group: str) -> list[str]:
        admin = AdminClient(self._config)
        try:
            result = admin.describe_consumer_groups([group])[group].result(timeout=20)
        except ck.KafkaException as exc:
            raise translate(exc, f"describe group {group}") from None
        if result.members:
            return [_member_name(m) for m in result.members]
        share = self.share_group(group)
        return [] if share is None else sorted(share.members)

    def topics(self) -> dict[str, int]:
        try:
            meta = self._reader.list_topics(timeout=self._settings.broker_timeout)
        except ck.KafkaException as exc:
            raise translate(exc, "metadata") from None
        return {
            name: len(t.partitions)
            for name, t in meta.topics.items()
            if t.error is None and not name.startswith("__")
        }

    def groups(self) -> list[str]:
        admin = AdminClient(self._config)
        try:
            result = admin.list_consumer_groups().result(timeout=20)
        except ck.KafkaException as exc:
            raise translate(exc, "list groups") from None
        found = {g.group_id for g in result.valid if not g.group_id.startswith("streamq-ops-")}
        try:
            meta = self._reader.list_topics(timeout=self._settings.broker_timeout)
            brokers = [(b.host, b.port) for b in meta.brokers.values()]
            found.update(self._wire.share_groups(brokers))
        except (ck.KafkaException, ConfigError) as exc:  # SASL: say so, list the others
            log.warning("share groups not listed: %s", exc)
        return sorted(found)

    def owners(self, group: str, topic: str) -> dict[int, str]:
        admin = AdminClient(self._config)
        try:
            result = admin.describe_consumer_groups([group])[group].result(timeout=20)
        except ck.KafkaException:
            return {}  # not allowed to describe the group (ACLs): owners unknown
        share = None if result.members else self.share_group(group)
        if share is not None:
            readers = [m for m, assignment in share.members.items() if topic in assignment]
            return {p: f"shared by {len(readers)}" for p in self.partitions(topic) if readers}
        out: dict[int, str] = {}
        for m in result.members or []:
            for tp in getattr(m.assignment, "topic_partitions", None) or []:
                if tp.topic == topic:
                    out[tp.partition] = _member_name(m)
        return out

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None:
        if self.share_group(group) is not None:
            raise ConfigError(
                f"group {group!r} is a share group: its start offsets are moved with "
                f"`kafka-share-groups.sh --reset-offsets --group {group} --topic {topic} "
                "--to-earliest|--to-latest|--to-datetime ... --execute` while no member runs "
                "(librdkafka has no share-group admin API); to handle a range again without "
                "moving anything, use `streamq replay`"
            )
        consumer = self._group_consumer(group)
        try:
            parts = [ck.TopicPartition(topic, p, o) for p, o in positions.items()]
            result = consumer.commit(offsets=parts, asynchronous=False)
        except ck.KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code in _GROUP_ACTIVE:
                # The coordinator accepts commits from outside the group only while it is
                # empty; brokers that list no members still refuse here.
                raise ConfigError(
                    f"group {group!r} has active members (the broker refused the reset: "
                    f"{exc.args[0].str()}); stop them first"
                ) from None
            raise translate(exc, f"commit offsets of {group}") from None
        finally:
            consumer.close()
        failed = [f"{tp.partition}: {tp.error}" for tp in result or [] if tp.error]
        if failed:
            raise BrokerUnavailable(f"setting offsets of {group} failed: {'; '.join(failed)}")

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
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

    def read_topic(self, topic: str) -> Iterator[Message]:
        """Explicit assignment from the earliest offset, up to the high watermarks at the start.

        The read is over once the consumer's position in every partition reached those
        marks: a position also steps over the control records that end a transaction, which
        ``read`` (bounded by offsets seen) would wait for in vain.
        """
        settings = self._settings
        consumer = self._reader
        try:
            meta = consumer.list_topics(topic, timeout=settings.broker_timeout).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
            parts = sorted(meta.partitions)
            marks = {p: consumer.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10)
                     for p in parts}  # fmt: skip
            ends = {p: high for p, (_, high) in marks.items()}
            todo = {p for p, (low, high) in marks.items() if high > low}
            consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
            deadline = time.monotonic() + settings.broker_timeout
            while todo:
                batch: list[Any] = consumer.consume(500, 1.0)
                for m in batch:
                    if m.error() is None:
                        yield to_message(m)
                if batch:
                    deadline = time.monotonic() + settings.broker_timeout
                # the consumer's position, not the last record: it also steps over the control
                # records that end a transaction, which no consume() returns
                reached = consumer.position([ck.TopicPartition(topic, p) for p in todo])
                todo -= {tp.partition for tp in reached if tp.offset >= ends[tp.partition]}
                if todo and not batch and time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"reading {topic}: no records for {settings.broker_timeout:.0f}s "
                        "before its end"
                    )
        except ck.KafkaException as exc:
            raise translate(exc, f"read {topic}") from None
        finally:
            consumer.unassign()

    def group_type(self, group: str) -> str:
        return "classic" if self.share_group(group) is None else "share"

    def close(self) -> None:
        self._reader.close()
        self._wire.close()


def _member_name(member: Any) -> str:
    """As ``members`` lists it: every worker of a group shares its client id and host."""
    return f"{member.client_id}@{member.host} ({member.member_id})"
