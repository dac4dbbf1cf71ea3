"""Fault scenarios run on both real brokers; each gets a fresh topic."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import redis

import streamq
from streamq.brokers import connect
from tests.integration.helpers import unique

# Tansu's high watermark is wrong for multi-record batches (DESIGN.md): one record per batch.
EXACT_WATERMARKS = {"linger.ms": 0, "batch.num.messages": 1}


@dataclass
class Broker:
    kind: str
    url: str
    dedup_url: str  # a Redis for the dedup store, whatever the broker

    def topic(self, partitions: int = 2) -> str:
        name = unique("fault")
        connect(self.url).admin().create_topic(name, partitions)
        return name

    def produce(self, topic: str, records: list[tuple[int, bytes]]) -> dict[int, tuple[int, int]]:
        """Send (id, value) pairs keyed by id % 20; return id -> (partition, offset)."""
        extra = {"kafka": EXACT_WATERMARKS} if self.kind == "kafka" else {}
        with streamq.Producer(self.url, **extra) as producer:
            futures = {i: producer.send(topic, value, key=f"k{i % 20}") for i, value in records}
            assert producer.flush(60) == 0
        return {i: (f.result().partition, f.result().offset) for i, f in futures.items()}

    def dlq_origins(self, topic: str) -> list[tuple[int, int]]:
        """(partition, offset) of the source of every DLQ record, duplicates included."""
        headers = self._dlq_headers(f"{topic}.dlq")
        return [(int(h["streamq-original-partition"]), int(h["streamq-original-offset"]))
                for h in headers]  # fmt: skip

    def _dlq_headers(self, dlq: str) -> list[dict[str, bytes]]:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            out = []
            for p in range(int(client.hget(f"streamq:topic:{dlq}", "partitions") or 0)):
                for _, fields in client.xrange(f"{dlq}:{p}"):
                    from streamq.brokers.redis_streams import decode_headers

                    out.append(dict(decode_headers(fields.get(b"h")) or []))
            client.close()
            return out
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        config = {
            "bootstrap.servers": self.url.removeprefix("kafka://"),
            "group.id": unique("dlq-reader"),
            "enable.auto.commit": False,
        }
        consumer = Consumer(config)
        meta = consumer.list_topics(dlq, timeout=20).topics[dlq]
        consumer.assign([TopicPartition(dlq, p, OFFSET_BEGINNING) for p in meta.partitions])
        out, quiet_since = [], time.monotonic()
        while time.monotonic() - quiet_since < 4:  # count records, not watermarks (Tansu)
            batch = [m for m in consumer.consume(100, 0.5) if m.error() is None]
            if batch:
                quiet_since = time.monotonic()
            out += [dict(m.headers() or []) for m in batch]
        consumer.close()
        return out


@pytest.fixture(params=["kafka", "redis"])
def broker(request: pytest.FixtureRequest, redis_server) -> Broker:
    if request.param == "kafka":
        return Broker("kafka", f"kafka://{request.getfixturevalue('kafka_bootstrap')}",
                      redis_server.url)  # fmt: skip
    return Broker("redis", redis_server.url, redis_server.url)
