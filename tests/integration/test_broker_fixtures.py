"""The test brokers start here and support what streamq's backends will rely on.

These probe the fixtures (Apache Kafka from the JVM launcher, a private durable redis-server),
not a streamq backend: consumer groups with commits on Kafka, and streams with groups that survive a
SIGKILL under AOF on Redis. In CI (STREAMQ_REQUIRE_BROKERS=1) a broker that cannot start
fails here instead of silently skipping every broker test.
"""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.timeout(90)


@pytest.mark.kafka
def test_kafka_serves_groups_and_commits(kafka_bootstrap: str) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(20)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=b"v%d" % i)
    assert producer.flush(20) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 45
    while len(got) < 10 and time.monotonic() < deadline:
        got += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    assert len(got) == 10
    last = {}
    for m in got:
        last[m.partition()] = m.offset() + 1
    consumer.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in last.items()], asynchronous=False
    )
    committed = consumer.committed([TopicPartition(topic, p) for p in last], timeout=20)
    assert {tp.partition: tp.offset for tp in committed} == last
    consumer.close()


@pytest.mark.redis
def test_redis_stream_groups_survive_sigkill_with_aof(redis_server) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create("orders:0", "g", id="0", mkstream=True)
    ids = [client.xadd("orders:0", {"n": i}) for i in range(5)]
    client.xreadgroup("g", "c1", {"orders:0": ">"}, count=5)
    client.xack("orders:0", "g", ids[0])
    client.close()
    redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    pending = client.xpending("orders:0", "g")
    assert pending["pending"] == 4  # delivered-but-unacked entries survived the kill
    assert client.xlen("orders:0") == 5
    client.close()
