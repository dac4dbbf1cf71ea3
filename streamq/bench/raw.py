"""The raw side: the tightest loop each client library offers, with the handler's work.

Fetch a batch, do the per-record work, count the batch, commit once per batch: the baseline
streamq is measured against. Keep these loops free of anything else per record, or the
ratio flatters streamq (``tally``: how each side counts). ``--transform`` (outputs, and
commits as each guarantee demands) has its own loops in ``raw_transform``.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from typing import Any

from .raw_transform import (
    kafka_stamps,
    raw_kafka_transform,
    raw_redis_transform,
    redis_group_streams,
    redis_stamps,
)
from .spec import BenchSpec, parse_handler
from .tally import Tally
from .workloads import transform_fn, work_fn


def raw_drain(spec: BenchSpec, slot: int, stop: threading.Event) -> None:
    """The client library's own loop: fetch, the handler's work, commit once per batch."""
    kind, sleep_s = parse_handler(spec.handler)
    work = work_fn(kind, sleep_s)
    tally = Tally(spec.shm, slot)
    try:
        if spec.transform:  # consume-transform-produce: its own loops
            transform = transform_fn(kind)
            kafka = spec.broker.startswith("kafka://")
            loop = raw_kafka_transform if kafka else raw_redis_transform
            loop(spec, transform, tally, stop)
        elif spec.group_type == "share" and spec.broker.startswith("kafka://"):
            _raw_kafka_share(spec, _batch_runner(spec, work, sleep_s), tally, stop)
        elif spec.broker.startswith("kafka://"):
            _raw_kafka(spec, work, tally, stop)
        elif spec.broker.startswith(("redis://", "rediss://")):
            _raw_redis(spec, work, tally, stop)
        else:
            _raw_memory(spec, work, tally, stop)
    finally:
        tally.close()


def _raw_kafka(spec: BenchSpec, work: Any, tally: Tally, stop: threading.Event) -> None:
    from confluent_kafka import Consumer

    from ..brokers.kafka import KafkaBroker
    from ..brokers.kafka.consumer import read_batch
    from ..settings import load_settings

    broker = KafkaBroker(spec.broker, load_settings(broker=spec.broker))
    config = broker.consumer_config(spec.group)  # the same librdkafka tuning streamq uses
    config.pop("enable.auto.offset.store", None)
    consumer = Consumer(config)
    consumer.subscribe(spec.topics)
    size = spec.max_poll_records
    try:
        while not stop.is_set():
            batch = read_batch(consumer, size, 0.1)  # streamq's read: see its docstring
            if not batch:
                continue
            tally.begin()
            errors = 0
            for m in batch:
                if m.error() is None:
                    work(m.value())
                else:
                    errors += 1
            tally.add(len(batch) - errors, partial(kafka_stamps, batch))
            consumer.commit(asynchronous=True)
    finally:
        consumer.close()


def _batch_runner(spec: BenchSpec, work: Any, sleep_s: float) -> Any:
    """The per-batch work of a Kafka share loop, as a user would write it.

    In order; or, for work that sleeps (I/O) with a ``--concurrency``, through a thread pool
    of that size.
    """
    if not (sleep_s and spec.concurrency):

        def serial(records: list[Any]) -> None:
            for m in records:
                work(m.value())

        return serial
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(spec.concurrency)

    def one(m: Any) -> None:
        work(m.value())

    def pooled(records: list[Any]) -> None:
        for _ in pool.map(one, records):
            pass

    return pooled


def _raw_kafka_share(spec: BenchSpec, run_batch: Any, tally: Tally, stop: threading.Event) -> None:
    """A skilled user's share-group loop: poll, the work, ACCEPT each.

    The next poll carries the acknowledgements to the broker.
    """
    from confluent_kafka import AcknowledgeType, ShareConsumer

    from ..brokers.kafka import KafkaBroker
    from ..brokers.kafka.share import configure_share_group
    from ..settings import load_settings

    broker = KafkaBroker(spec.broker, load_settings(broker=spec.broker))
    configure_share_group(broker, spec.group)
    consumer = ShareConsumer(broker.share_consumer_config(spec.group))
    consumer.subscribe(spec.topics)
    accept = AcknowledgeType.ACCEPT
    try:
        while not stop.is_set():
            batch = [m for m in consumer.poll(0.1) if m.error() is None]
            if not batch:
                continue
            tally.begin()
            run_batch(batch)
            for m in batch:
                consumer.acknowledge(m, accept)
            tally.add(len(batch), partial(kafka_stamps, batch))
    finally:
        consumer.close()


def _raw_redis(spec: BenchSpec, work: Any, tally: Tally, stop: threading.Event) -> None:
    """XREADGROUP over the partition streams, the work, one pipelined XACK per batch.

    The same loop is a share group's (competing consumers); with ``--concurrency`` and work
    that sleeps, each stream's entries go through a thread pool of that size.
    """
    r, keys = redis_group_streams(spec)
    consumer = f"raw-{os.getpid()}"
    streams = dict.fromkeys(keys, ">")
    size = spec.max_poll_records

    def one(entry: Any) -> None:
        work(entry[1][b"v"])

    pool = None
    if spec.concurrency and parse_handler(spec.handler)[1]:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(spec.concurrency)
    # The drain starts when the read that brought the first records began: that read can
    # hold the whole backlog (Tally.reading). Data is there, so it does not wait on BLOCK.
    started = False
    while not stop.is_set():
        if not started:
            tally.reading()
        reply = r.xreadgroup(spec.group, consumer, streams, count=size, block=100)
        if not reply:
            continue
        started = True
        tally.begin()
        pipe = r.pipeline(transaction=False)
        n = 0
        for key, entries in reply:
            ids = []
            if pool is None:  # the tight loop: nothing per record but the work
                for entry_id, fields in entries:
                    work(fields[b"v"])
                    ids.append(entry_id)
            else:
                for _ in pool.map(one, entries):
                    pass
                ids = [entry_id for entry_id, _ in entries]
            pipe.xack(key, spec.group, *ids)
            n += len(ids)
        tally.add(n, partial(redis_stamps, reply))  # handled: counted before the XACK
        pipe.execute()
    r.close()


def _memory_stamps(batch: list[Any]) -> list[int]:
    return [m.timestamp for m in batch]


def _raw_memory(spec: BenchSpec, work: Any, tally: Tally, stop: threading.Event) -> None:
    from ..brokers import connect
    from ..settings import load_settings

    settings = load_settings(broker=spec.broker)
    backend: Any = connect(spec.broker).consumer(spec.group, settings)
    owned: set[Any] = set()
    backend.subscribe(spec.topics, owned.update, owned.difference_update, owned.difference_update)
    positions: dict[Any, int] = {}
    while not stop.is_set():
        batch = backend.poll_batch(spec.max_poll_records, 0.1)
        if not batch:
            continue
        tally.begin()
        for m in batch:
            work(m.value)
            positions[m.tp] = m.offset + 1
        backend.commit(positions, sync=False)
        tally.add(len(batch), partial(_memory_stamps, batch))
    backend.close()
