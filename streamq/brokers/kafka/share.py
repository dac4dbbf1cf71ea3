"""A share-group member on Apache Kafka 4.2+ (KIP-932, ``group_type="share"``).

confluent-kafka's ``ShareConsumer`` (a preview API) in explicit acknowledgement mode: every
member reads every partition, the broker hands each record to one member under a lock
(``share.record.lock.duration.ms``, from ``visibility_timeout``) and counts its deliveries.
A record whose lock lapsed (its member died, or ran longer) comes again, to any member, with
``delivery_count`` > 1, which becomes ``Message.attempt``.

Two rules of the client shape this backend, both stated in its documentation: every record
of a poll must be acknowledged before the next poll, and the consumer is not thread-safe.
So the poll thread alone calls it, and reads in rounds: ``poll_batch`` polls only once
``commit`` acknowledged every record of the last round (ACCEPT: handled; REJECT:
dead-lettered, after its DLQ write, so the broker archives it as given up).
Acknowledgements are local until the next poll or commit carries them; ``commit(sync=True)``
sends them at once. On a stop, what did not finish is RELEASEd, so the
other members get it at once instead of after the lock.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...dispatch import kafka_messages
from ...errors import BrokerError, ConfigError, MemberFenced, UnknownTopicOrPartition
from ...logs import get_logger
from ...message import Message, TopicPartition
from ..base import Rebalance, Round, ShareBackend
from .client import AdminClient, KafkaError, KafkaException, ck
from .errors import error_log, translate, wait_for_broker

if TYPE_CHECKING:
    from .config import KafkaBroker

__all__ = ["KafkaShareConsumer", "configure_share_group"]

log = get_logger("streamq.kafka")

# Seconds finished records of a round still running may wait before their acknowledgements
# are sent (commit_async); the next poll sends them anyway once the round is done.
_ACK_EVERY = 0.05


def configure_share_group(broker: KafkaBroker, group: str) -> None:
    """The group's own settings, set before its first member polls (KIP-932 group configs).

    ``share.auto.offset.reset`` defaults to ``latest``: records produced before the first
    member joined would never be delivered. The lock duration is ``visibility_timeout``,
    within the broker's ``group.share.{min,max}.record.lock.duration.ms``.
    """
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    settings = broker.settings
    values = {
        "share.auto.offset.reset": settings.auto_offset_reset,
        "share.record.lock.duration.ms": str(int(settings.visibility_timeout * 1000)),
    }
    entries = [
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in values.items()
    ]
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    admin = AdminClient(broker.client_config())
    try:
        admin.incremental_alter_configs([resource])[resource].result(settings.broker_timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        text = err.str() if isinstance(err, KafkaError) else str(exc)
        raise ConfigError(
            f"group {group!r}: the broker refused the share group's settings {values} "
            f"({text}); share groups need Apache Kafka 4.2+ (share.version=1), and the lock "
            "duration (visibility_timeout) must lie within the broker's "
            "group.share.min/max.record.lock.duration.ms"
        ) from None


class KafkaShareConsumer(ShareBackend):
    def __init__(self, broker: KafkaBroker, group: str, round_size: int = 500) -> None:
        self._broker = broker
        self._settings = broker.settings
        self._group = group
        # max.poll.records is fixed for the client's life (not the adaptive size of Redis
        # rounds), and only a soft limit: the broker hands out whole producer batches
        # (KIP-1206's strict limit is not in librdkafka)
        try:
            self._consumer = ck.ShareConsumer(broker.share_consumer_config(group, round_size))
        except (KafkaException, ValueError) as exc:
            raise ConfigError(f"group {group!r}: cannot create a share consumer: {exc}") from None
        self._consumer.set_acknowledgement_commit_callback(self._on_acks)
        self._held: dict[TopicPartition, set[int]] = {}  # delivered, not acknowledged
        self._rejected: set[tuple[str, int, int]] = set()  # dead-lettered, to REJECT
        self._assignment: list[TopicPartition] = []
        self._callbacks: tuple[Rebalance, Rebalance, Rebalance] | None = None
        self._closed = False
        self._events: Counter[tuple[str, str, str]] = Counter()
        self.redelivered = False
        self.round = self._round = Round()
        self._acks_since = 0.0  # when the oldest acknowledgement not yet sent was made

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        admin = AdminClient(self._broker.client_config())
        wait_for_broker(
            lambda t: admin.list_topics(timeout=t),
            self._broker.bootstrap,
            self._settings.broker_timeout,
        )
        try:
            meta = admin.list_topics(timeout=self._settings.broker_timeout)
        except KafkaException as exc:
            raise translate(exc, "metadata") from None
        missing = [t for t in topics if t not in meta.topics]
        if missing:
            raise UnknownTopicOrPartition(
                f"group {self._group}: a share group reads existing topics; {missing} do not "
                "exist (create them with `streamq topics create`)"
            )
        configure_share_group(self._broker, self._group)
        self._callbacks = (on_assign, on_revoke, on_lost)
        for topic in topics:
            for p in sorted(meta.topics[topic].partitions):
                tp = TopicPartition(topic, p)
                self._held[tp] = set()
                self._assignment.append(tp)
        try:
            self._consumer.subscribe(list(topics))
        except KafkaException as exc:
            raise translate(exc, "subscribe") from None
        on_assign(list(self._assignment))  # every member reads every partition

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        if any(self._held.values()):  # the client refuses a poll before the last is acked
            self._round.done.wait(timeout)  # the runtime counts the round down
            return []
        try:
            raw = self._consumer.poll(timeout)
        except KafkaException as exc:
            raise self._fatal_or(exc) from None
        if not raw:
            self.redelivered = False
            return []
        records: list[Any] = sorted(raw, key=_position)  # per partition in offset order
        msgs = kafka_messages(records, self._record_error)
        redelivered = False
        i = 0
        for record in records:
            if record.error() is not None:
                continue
            count = record.delivery_count()
            if count is not None and count > 1:
                m = msgs[i]
                m.attempt = count
                redelivered = True
                self._events[("share_redelivered", m.topic, str(m.partition))] += 1
            i += 1
        self.redelivered = redelivered
        held = self._held
        at: tuple[str, int] = ("", -1)
        offsets: set[int] = set()
        for m in msgs:  # sorted: one partition's records in a row
            if m.partition != at[1] or m.topic != at[0]:
                at = (m.topic, m.partition)
                offsets = held[TopicPartition(*at)]
            offsets.add(m.offset)
        self._round.start(len(msgs))
        return msgs

    def _fatal_or(self, exc: KafkaException) -> BrokerError:
        """A fatal client error stops the worker: ``MemberFenced``, exit 5, not restarted.

        Retrying cannot help. Seen on Kafka 4.1, which has no share groups on: the share
        heartbeat's API version is not supported.
        """
        err = exc.args[0] if exc.args else None
        text = err.str() if isinstance(err, KafkaError) else str(exc)
        if not (isinstance(err, KafkaError) and err.fatal()) and "fatal" not in text.lower():
            return translate(exc, "share poll")
        hint = ""
        if "does not exist" in text.lower():  # what a 4.2 broker says of a classic group's id
            hint = (
                "; the group id is most likely a classic consumer group's on this broker "
                "(live members or committed offsets), which a share group cannot take: give "
                "the share group another name"
            )
        if "not supported" in text.lower():
            hint = (
                "; share groups need Apache Kafka 4.2+ with share groups on "
                "(share.version=1, the default of a cluster formatted by 4.2)"
            )
        return MemberFenced(f"group {self._group}: the share consumer stopped: {text}{hint}")

    def _record_error(self, err: KafkaError) -> None:
        error_log.warning("group %s: %s", self._group, err.str())

    def _on_acks(self, offsets: Any, exc: Any) -> None:
        """The broker's answer to acknowledgements (served inside poll or commit)."""
        if exc is None:
            return
        for tp in offsets or ():
            self._events[("share_ack_failed", tp.topic, str(tp.partition))] += 1
        log.warning(
            "group %s: acknowledgements refused (%s): those records are delivered again once "
            "their locks lapse (a duplicate for records already handled)",
            self._group,
            exc,
        )

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        """Nothing to pause: a round is read only once the last one is acknowledged."""

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        pass

    # -- acknowledging -----------------------------------------------------------------------

    def acknowledge(self, tp: TopicPartition, records: Sequence[Message]) -> None:
        """ACCEPT each, REJECT the dead-lettered (local until a poll or commit carries it)."""
        held = self._held.get(tp)
        if not held:
            return
        ack = self._consumer.acknowledge_offset
        accept = ck.AcknowledgeType.ACCEPT
        topic, partition = tp
        rejected = self._rejected
        accepted = dead = 0
        for m in records:
            if m.offset in held:
                held.discard(m.offset)
                if rejected and (topic, partition, m.offset) in rejected:
                    rejected.discard((topic, partition, m.offset))
                    ack(topic, partition, m.offset, ck.AcknowledgeType.REJECT)
                    dead += 1
                    continue
                ack(topic, partition, m.offset, accept)
                accepted += 1
        self._count(tp, accepted, dead)
        if not self._acks_since:
            self._acks_since = time.monotonic()

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        """Send the acknowledgements (``acknowledge``).

        Sync sends them now; otherwise they go with the next poll, or with an asynchronous
        commit once the oldest has waited ``_ACK_EVERY`` seconds in a round still running,
        so a member that dies redoes at most that much finished work.
        """
        if sync:
            self._send_acks()
            self._acks_since = 0.0
            return
        now = time.monotonic()
        if self._acks_since and now - self._acks_since >= _ACK_EVERY:
            self._acks_since = 0.0
            if any(self._held.values()):  # else the next poll, at once, carries them
                try:
                    self._consumer.commit_async()
                except KafkaException as exc:
                    raise translate(exc, "share acknowledge") from None

    def _send_acks(self) -> None:
        try:
            results = self._consumer.commit_sync(self._settings.broker_timeout)
        except KafkaException as exc:
            raise translate(exc, "share acknowledge") from None
        failed = {tp: e for tp, e in (results or {}).items() if e is not None}
        if failed:
            log.warning(
                "group %s: acknowledgements refused for %s: those records are delivered "
                "again once their locks lapse",
                self._group,
                sorted(f"{tp.topic}[{tp.partition}]" for tp in failed),
            )

    def _release_held(self) -> None:
        """Hand back what did not finish: the other members get it now, not after the lock."""
        release = ck.AcknowledgeType.RELEASE
        for tp, held in self._held.items():
            for offset in sorted(held):
                self._consumer.acknowledge_offset(tp.topic, tp.partition, offset, release)
            if held:
                self._events[("share_released", tp.topic, str(tp.partition))] += len(held)
            held.clear()

    # -- what a share group does not have ----------------------------------------------------

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        raise ConfigError("a share group has no position to move (replay into a classic group)")

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        raise ConfigError("a share group has no committed offsets; its records are acked alone")

    @property
    def settled(self) -> bool:
        return True  # no assignment to wait for: every member reads every partition

    @property
    def events(self) -> Counter[tuple[str, str, str]]:
        return self._events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._callbacks is not None:
                self._callbacks[1](list(self._assignment))  # finish; acknowledge what did
            self._release_held()
            self._consumer.close()  # sends the acknowledgements, leaves the group
        except (KafkaException, RuntimeError) as exc:
            log.warning(
                "group %s: leaving the share group cleanly failed (%s); what this member "
                "held is delivered again once its locks lapse",
                self._group,
                exc,
            )


def _position(record: Any) -> tuple[str, int, int]:
    return (record.topic() or "", record.partition() or 0, record.offset() or 0)
