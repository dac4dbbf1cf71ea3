"""``--transform``: how many outputs a reader of the drain's output topic sees, as it runs.

A transform drain is done when every output is visible, not when the last handler returned:
under exactly once, outputs appear only at the commit. ``count_outputs`` runs in
``run_bench``'s process, outside the drain's own (whose CPU is measured), and keeps the count
in the shared header, where the drain's ``Monitor`` reads it. On Kafka it reads the topic
with ``isolation.level=read_committed`` (so a record counts once its transaction committed)
and counts records, since offsets also count transaction markers; on Redis the streams'
lengths are the count.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .spec import BenchSpec
from .tally import _OUTPUTS


@contextmanager
def count_outputs(spec: BenchSpec, view: Any) -> Iterator[None]:
    """Count ``spec.output_topic`` into ``view[_OUTPUTS]`` until the block ends."""
    stop = threading.Event()
    count = _count_kafka if spec.broker.startswith("kafka://") else _count_redis
    thread = threading.Thread(target=count, args=(spec, view, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _count_kafka(spec: BenchSpec, view: Any, stop: threading.Event) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from ..brokers.kafka import KafkaBroker
    from ..settings import load_settings

    broker = KafkaBroker(spec.broker, load_settings(broker=spec.broker))
    consumer = Consumer(
        broker.client_config() | {
            "group.id": f"{spec.group}-outputs",  # assigned, never committed: no group joins
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,  # an idle fetch answers soon: the drain's end is seen
        }
    )  # fmt: skip
    consumer.assign(
        [TopicPartition(spec.output_topic, p, OFFSET_BEGINNING) for p in range(spec.partitions)]
    )
    seen = 0
    try:
        while not stop.is_set():
            seen += sum(1 for m in consumer.consume(10_000, 0.05) if m.error() is None)
            view[_OUTPUTS] = seen
    finally:
        consumer.close()


def _count_redis(spec: BenchSpec, view: Any, stop: threading.Event) -> None:
    import redis

    from ..brokers.redis.keys import stream_key
    from ..message import TopicPartition

    r: Any = redis.Redis.from_url(spec.broker)
    keys = [stream_key(TopicPartition(spec.output_topic, p)) for p in range(spec.partitions)]
    try:
        while not stop.wait(0.002):
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.xlen(key)
            view[_OUTPUTS] = sum(pipe.execute())
    finally:
        r.close()
