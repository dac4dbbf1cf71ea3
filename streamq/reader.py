"""Read a whole topic from its beginning, on any broker: for DLQ tools and inspection.

Kafka: explicit assignment from the earliest offset, no consumer group, so nothing is
committed anywhere. It stops once the consumer's position in every partition reached the
high watermark it had when the read began. Redis: XRANGE in pages. Memory: the in-process
log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import BrokerUnavailable, UnknownTopicOrPartition
from .message import Message
from .settings import Settings

__all__ = ["read_topic"]


def read_topic(url: str, topic: str, settings: Settings) -> Iterator[Message]:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "kafka":
        yield from _read_kafka(url, topic, settings)
    elif scheme in ("redis", "rediss"):
        yield from _read_redis(url, topic, settings)
    else:
        yield from _read_memory(url, topic)


def _read_memory(url: str, topic: str) -> Iterator[Message]:
    from .brokers.memory import get_log, parse_url

    log = get_log(parse_url(url)[0])
    if topic not in log.topics:
        raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
    for p, records in enumerate(log.topics[topic]):
        for offset, (key, value, headers, ts) in enumerate(list(records)):
            yield Message(topic, p, offset, key, value, headers, ts)


def _read_redis(url: str, topic: str, settings: Settings) -> Iterator[Message]:
    from .brokers.redis_streams import RedisBroker, entry_to_message, wait_for_redis

    broker = RedisBroker(url, settings)
    client = broker.client()
    try:
        wait_for_redis(client, broker.client_url, settings.broker_timeout)
        for p in range(broker.partitions(client, topic, create=False)):
            start = "-"
            while True:
                page: Any = client.xrange(f"{topic}:{p}", start, "+", count=1000)
                for entry_id, fields in page:
                    yield entry_to_message(topic, p, entry_id, fields)
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0].decode()
    finally:
        client.close()


def _read_kafka(url: str, topic: str, settings: Settings) -> Iterator[Message]:
    import confluent_kafka as ck

    from .brokers.kafka import KafkaBroker, to_message, translate, wait_for_broker

    broker = KafkaBroker(url, settings)
    config = broker.client_config() | {
        "group.id": f"streamq-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }
    consumer = ck.Consumer(config)
    try:
        wait_for_broker(lambda t: consumer.list_topics(timeout=t), broker.bootstrap,
                        settings.broker_timeout)  # fmt: skip
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
                    f"reading {topic}: no records for {settings.broker_timeout:.0f}s before its end"
                )
    except ck.KafkaException as exc:
        raise translate(exc, f"read {topic}") from None
    finally:
        consumer.close()
