"""Drain a pre-filled topic: the raw confluent-kafka loop and streamq, in the same run.

    python benchmarks/kafka_drain.py --bootstrap 127.0.0.1:9092 --messages 200000

Prints records/s for the raw consume() loop with orjson at librdkafka's default
fetch.queue.backoff.ms (1000) and at streamq's 10, then for streamq with a no-op handler
that receives the decoded payload, and the ratio streamq / raw(10 ms). Every consumer uses a
fresh group on the same topic, so each drains the same records from the broker.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import streamq


def fill(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions)]).values():
        f.result(30)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    payload = orjson.dumps({"id": 0, "customer": "customer-0001", "amount": 12.5, "note": "x" * 40})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payload, str(i % 1000).encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def raw_drain(bootstrap: str, topic: str, n: int, backoff_ms: int | None) -> float:
    config = {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
              "auto.offset.reset": "earliest", "enable.auto.commit": False}  # fmt: skip
    if backoff_ms is not None:
        config["fetch.queue.backoff.ms"] = backoff_ms
    consumer = Consumer(config)
    consumer.subscribe([topic])
    got, start = 0, None
    loads = orjson.loads
    while got < n:
        for m in consumer.consume(500, 1.0):
            if m.error() is None:
                if start is None:
                    start = time.perf_counter()
                loads(m.value())
                got += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def streamq_drain(bootstrap: str, topic: str, n: int) -> float:
    app = streamq.App(f"sq-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                      max_poll_records=2000, poll_timeout=0.05)  # fmt: skip
    marks: list[float] = []

    @app.handler(topic)
    def handle(value: dict) -> None:
        if not marks:
            marks.append(time.perf_counter())

    app.run(until_idle=1.0)
    assert app.stats.handled[topic] == n, app.stats.snapshot()
    # The run includes the idle wait at the end; subtract it to time the drain itself.
    return n / (time.perf_counter() - marks[0] - 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    fill(args.bootstrap, topic, args.messages, args.partitions)
    default = raw_drain(args.bootstrap, topic, args.messages, None)
    tuned = raw_drain(args.bootstrap, topic, args.messages, 10)
    ours = streamq_drain(args.bootstrap, topic, args.messages)
    print(json.dumps({
        "messages": args.messages, "dispatch": streamq.IMPLEMENTATION,
        "raw_default_backoff_rps": round(default), "raw_backoff_10ms_rps": round(tuned),
        "streamq_rps": round(ours), "ratio_vs_raw_10ms": round(ours / tuned, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
