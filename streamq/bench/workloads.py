"""What the benchmark writes and what each record costs to handle, the same for both sides.

The payloads, the backlog written before any drain (not timed), the latency records produced
while a drain runs, and the per-record work (``--handler``) that the raw loop and the streamq
handlers both do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from pydantic import BaseModel

from .spec import BenchSpec

_CPU_ITERS = 2_000  # the "cpu" handler: about 50 us of pure-Python arithmetic here


class BenchRecord(BaseModel):
    """The payload every record carries; ``pad`` brings it to ``--size`` bytes."""

    id: int
    customer: str
    amount: float
    pad: str


def payload(i: int, size: int) -> bytes:
    base = {"id": i, "customer": f"customer-{i % 1000:04d}", "amount": 12.5, "pad": ""}
    pad = max(0, size - len(orjson.dumps(base)))
    base["pad"] = "x" * pad
    return orjson.dumps(base)


# -- the per-record work, shared by both sides --------------------------------------------------


def _burn() -> int:
    total = 0
    for i in range(_CPU_ITERS):
        total += i * i
    return total


def work_fn(kind: str, sleep_s: float) -> Callable[[Any], Any]:
    """The raw loop's per-record work, matching what the streamq handler does."""
    loads = orjson.loads
    if kind == "noop":
        return lambda v: None
    if kind == "json":
        return loads
    if kind == "pydantic":
        return BenchRecord.model_validate_json
    if kind == "cpu":
        return lambda v: (loads(v), _burn())
    return lambda v: time.sleep(sleep_s)


def derive(record: dict[str, Any]) -> dict[str, Any]:
    """``--transform``: the output of one decoded input, small and computed from it."""
    return {"id": record["id"], "customer": record["customer"], "total": record["amount"] * 2}


def transform_fn(kind: str) -> Callable[[bytes], bytes]:
    """The raw loop's transform: the ``--handler`` work on the input, then the output encoded.

    streamq's handler does the same: its ``value: dict`` parameter decodes, and the ``Out`` it
    returns is encoded with orjson.
    """
    loads, dumps = orjson.loads, orjson.dumps
    if kind == "cpu":

        def transform_cpu(value: bytes) -> bytes:
            record = loads(value)
            _burn()
            return dumps(derive(record))

        return transform_cpu
    return lambda value: dumps(derive(loads(value)))


# -- the records: the backlog before the drains, the latency records during one -----------------


def fill(spec: BenchSpec) -> None:
    """Create the topic and write the backlog; not timed."""
    from ..brokers import connect
    from ..producer import Producer

    connect(spec.broker).admin().create_topic(spec.topic, spec.partitions)
    if spec.broker.startswith("kafka://"):
        _fill_kafka(spec)
        return
    values = [payload(i, spec.size) for i in range(min(spec.messages, 1000))]
    with Producer(spec.broker) as producer:
        for i in range(spec.messages):
            producer.send(spec.topic, values[i % len(values)], key=f"k{i % spec.keys}")
            if i % 10_000 == 9_999:
                producer.flush(60)


def _fill_kafka(spec: BenchSpec) -> None:
    from confluent_kafka import Producer as CkProducer

    from ..murmur2 import partition_for_key

    producer = CkProducer(
        {"bootstrap.servers": spec.broker.split("://", 1)[1].split("?")[0], "linger.ms": 20,
         "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000}
    )  # fmt: skip
    values = [payload(i, spec.size) for i in range(min(spec.messages, 1000))]
    keys = [f"k{i}".encode() for i in range(spec.keys)]
    parts = [partition_for_key(k, spec.partitions) for k in keys]
    for i in range(spec.messages):
        k = i % spec.keys
        while True:
            try:
                producer.produce(spec.topic, values[i % len(values)], keys[k], partition=parts[k])
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(300):
        raise RuntimeError("the Kafka fill did not finish within 300 s")


def produce_latency(spec: BenchSpec) -> None:
    """Records at a steady rate while the consumer runs, each timed broker-stamp to handler.

    Runs in a process of its own (``LatencySender``), as a producer does in production: in
    the consumer's process its sending thread competed for the GIL with the consumer's
    threads (streamq has two, the raw loop one), which timed the load generator as much as
    the consumer. One record goes first, delivered before the timed ones start: a fresh
    producer's connection and metadata took 0.5 s on Kafka, and the records sent meanwhile
    carried that wait into both sides' p99. Then it says ``ready`` and waits for ``go``.
    """
    from ..producer import Producer

    extra: dict[str, Any] = {}
    if spec.broker.startswith("kafka://"):
        extra["kafka"] = {"linger.ms": 0}
    with Producer(spec.broker, **extra) as producer:
        producer.send(spec.latency_topic, payload(-1, spec.size), key="warm-up")
        producer.flush(30)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        interval = 1.0 / spec.latency_rate
        start = time.perf_counter()
        for i in range(spec.latency_messages):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(spec.latency_topic, payload(i, spec.size), key=f"k{i % spec.keys}")
        producer.flush(30)


class LatencySender:
    """``produce_latency`` in a child process: started (its warm-up record sent), then let go.

    The monitor waits for the warm-up record to be handled before sampling starts, so it is
    counted (one record more) but never timed.
    """

    def __init__(self, spec: BenchSpec) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "streamq.bench", "--produce-latency", json.dumps(asdict(spec))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise RuntimeError("the latency producer did not start")

    def go(self) -> None:
        """Send the timed records; returns when all of them are delivered."""
        assert self._proc.stdin is not None
        self._proc.stdin.write("go\n")
        self._proc.stdin.close()
        if self._proc.wait(120) != 0:
            raise RuntimeError("the latency producer failed")
