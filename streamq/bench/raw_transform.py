"""The raw side of ``--transform``: consume, produce one output per input, commit.

What a skilled user writes with the client library for each guarantee, and nothing more. The
commit cadence is streamq's (every ``commit_every`` records or ``commit_interval`` seconds,
and at once when a poll comes back empty, as streamq commits when idle), so both sides pay
for as many commits.

- Kafka, at least once: outputs are produced as inputs are handled; at each commit
  ``producer.flush()`` (every output acknowledged), then the consumer's positions are
  committed, asynchronously: the flush already made that safe, and streamq commits
  asynchronously too.
- Kafka, exactly once: confluent-kafka's transactional loop. A transaction stays open across
  the commit interval; at each commit ``send_offsets_to_transaction(position(assignment),
  consumer_group_metadata())`` and ``commit_transaction``, then the next one begins.
- Redis, at least once: one pipelined round trip per batch, its XADDs and, when a commit is
  due, the XACKs of inputs whose XADDs an earlier round trip already returned.
- Redis, exactly once: one script per batch doing its XADDs and XACKs. It checks no lease: a
  lone raw consumer has no zombie to fence, a check streamq pays for.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from .spec import BenchSpec
from .tally import Tally

Transform = Callable[[bytes], bytes]

# KEYS: the batch's n input streams, then one output stream per output, in order.
# ARGV: group, n, the n counts of entry IDs, the IDs stream by stream, then per output v, k.
_COMMIT_BATCH = """
local group, n = ARGV[1], tonumber(ARGV[2])
local a = 3 + n
for i = 1, n do
    local last = a + tonumber(ARGV[2 + i]) - 1
    while a <= last do  -- unpack has a stack limit: 1000 IDs per XACK
        local to = math.min(a + 999, last)
        redis.call('XACK', KEYS[i], group, unpack(ARGV, a, to))
        a = to + 1
    end
end
for j = n + 1, #KEYS do
    redis.call('XADD', KEYS[j], '*', 'v', ARGV[a], 'k', ARGV[a + 1])
    a = a + 2
end
return 0
"""


class _Cadence:
    """streamq's commit policy: every ``commit_every`` records or ``commit_interval`` seconds."""

    def __init__(self, spec: BenchSpec) -> None:
        from ..settings import load_settings

        settings = load_settings(broker=spec.broker)
        self.every, self.interval = settings.commit_every, settings.commit_interval
        self.pending, self.last = 0, time.monotonic()

    def due(self, polled: int) -> bool:
        """After a poll of ``polled`` records (all handled): is a commit due now?"""
        self.pending += polled
        if not self.pending:
            return False
        return not polled or self.pending >= self.every or self._late()

    def _late(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def done(self, left: int = 0) -> None:
        """Committed; ``left`` records were handled but not in this commit."""
        self.pending, self.last = left, time.monotonic()


def raw_kafka_transform(
    spec: BenchSpec, transform: Transform, tally: Tally, stop: threading.Event
) -> None:
    from confluent_kafka import Consumer, Producer

    from ..brokers.kafka import KafkaBroker
    from ..settings import load_settings

    broker = KafkaBroker(spec.broker, load_settings(broker=spec.broker))
    config = broker.consumer_config(spec.group)  # the same librdkafka tuning streamq uses
    config.pop("enable.auto.offset.store", None)  # positions move as records are consumed
    consumer = Consumer(config)
    producer_config = broker.producer_config()
    eos = spec.guarantee == "exactly_once"
    if eos:
        producer_config |= {
            "transactional.id": f"raw-{spec.group}-{os.getpid()}",
            "transaction.timeout.ms": 10_000,  # streamq's
            "message.timeout.ms": 10_000,
        }
    producer = Producer(producer_config)
    cadence = _Cadence(spec)

    def commit(*, sync: bool = False) -> None:
        if eos:
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata()
            )
            producer.commit_transaction()
            producer.begin_transaction()
        else:
            producer.flush()
            if sync:
                consumer.commit(asynchronous=False)
            else:
                consumer.commit(asynchronous=True)
        cadence.done()

    def on_revoke(_: Any, partitions: list[Any]) -> None:
        if cadence.pending:  # what was handled on them is committed before they go
            commit(sync=True)

    if eos:
        producer.init_transactions()
        producer.begin_transaction()
    consumer.subscribe(spec.topics, on_revoke=on_revoke)
    try:
        _kafka_loop(spec, consumer, producer, transform, tally, stop, cadence, commit)
    finally:
        consumer.close()
        if eos:
            _abort(producer)
        producer.flush(5)


def _abort(producer: Any) -> None:
    """The drain ended after its last commit: the open transaction holds nothing."""
    from confluent_kafka import KafkaException

    with contextlib.suppress(KafkaException):  # none was open
        producer.abort_transaction(5)


def _kafka_loop(
    spec: BenchSpec,
    consumer: Any,
    producer: Any,
    transform: Transform,
    tally: Tally,
    stop: threading.Event,
    cadence: _Cadence,
    commit: Callable[[], None],
) -> None:
    size, topic, produce = spec.max_poll_records, spec.output_topic, producer.produce
    while not stop.is_set():
        batch = consumer.consume(size, 0.1)
        if batch:
            tally.begin()
        for m in batch:
            if m.error() is None:
                out = transform(m.value())
                try:
                    produce(topic, out, m.key())
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.flush()
                    produce(topic, out, m.key())
        if batch:
            tally.add(len(batch), partial(kafka_stamps, batch))
        if cadence.due(len(batch)):
            commit()


def kafka_stamps(batch: list[Any]) -> list[int]:
    """Each record's broker timestamp (ms), for latency sampling."""
    return [m.timestamp()[1] for m in batch if m.error() is None]


def redis_stamps(reply: list[Any]) -> list[int]:
    """Each entry's producer timestamp (ms; its ID's time when it has none)."""
    out = []
    for _, entries in reply:
        for entry_id, fields in entries:
            stamp = fields.get(b"t")
            out.append(int(stamp) if stamp is not None else int(entry_id.split(b"-")[0]))
    return out


def redis_group_streams(spec: BenchSpec) -> tuple[Any, list[str]]:
    """A client, and the input streams with the bench's group created on each (the raw loops)."""
    import redis

    from ..brokers.redis.keys import stream_key
    from ..message import TopicPartition

    r: Any = redis.Redis.from_url(spec.broker)
    keys = [stream_key(TopicPartition(t, p)) for t in spec.topics for p in range(spec.partitions)]
    for key in keys:
        try:
            r.xgroup_create(key, spec.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    return r, keys


def raw_redis_transform(
    spec: BenchSpec, transform: Transform, tally: Tally, stop: threading.Event
) -> None:
    from ..brokers.redis.keys import stream_key
    from ..message import TopicPartition
    from ..murmur2 import partition_for_key

    r, keys = redis_group_streams(spec)
    streams: dict[bytes, str] = {}  # output stream per key: Kafka's murmur2 partition, as streamq

    def stream_for(key: bytes) -> str:
        found = streams.get(key)
        if found is None:
            tp = TopicPartition(spec.output_topic, partition_for_key(key, spec.partitions))
            found = streams[key] = stream_key(tp)
        return found

    reading = dict.fromkeys(keys, ">")
    consumer = f"raw-{os.getpid()}"
    try:
        if spec.guarantee == "exactly_once":
            script = r.register_script(_COMMIT_BATCH)
            while not stop.is_set():
                reply = r.xreadgroup(spec.group, consumer, reading, count=spec.max_poll_records,
                                     block=100)  # fmt: skip
                if reply:
                    tally.begin()
                    _redis_script_batch(spec, script, reply, transform, stream_for)
                    tally.add(sum(len(e) for _, e in reply), partial(redis_stamps, reply))
        else:
            _redis_alo(spec, r, consumer, reading, transform, tally, stream_for, stop)
    finally:
        r.close()


def _redis_alo(
    spec: BenchSpec,
    r: Any,
    consumer: str,
    reading: dict[str, str],
    transform: Transform,
    tally: Tally,
    stream_for: Callable[[bytes], str],
    stop: threading.Event,
) -> None:
    cadence = _Cadence(spec)
    ackable: dict[bytes, list[bytes]] = {}  # inputs whose outputs Redis has acknowledged
    while not stop.is_set():
        reply = r.xreadgroup(spec.group, consumer, reading, count=spec.max_poll_records,
                             block=100)  # fmt: skip
        pipe = r.pipeline(transaction=False)
        polled = sum(len(entries) for _, entries in reply or ())
        if cadence.due(polled) and ackable:
            for key, ids in ackable.items():
                pipe.xack(key, spec.group, *ids)
            ackable = {}
            cadence.done(left=polled)  # this batch's XADDs have not returned yet
        handled: list[tuple[bytes, list[bytes]]] = []
        if polled:
            tally.begin()
        for key, entries in reply or ():
            ids = []
            for entry_id, fields in entries:
                out = transform(fields[b"v"])
                k = fields[b"k"]
                pipe.xadd(stream_for(k), {"v": out, "k": k})
                ids.append(entry_id)
            handled.append((key, ids))
        if polled:
            tally.add(polled, partial(redis_stamps, reply))
        if len(pipe):
            pipe.execute()  # the XADDs returned: their inputs may be acknowledged
        for key, ids in handled:
            ackable.setdefault(key, []).extend(ids)


def _redis_script_batch(
    spec: BenchSpec,
    script: Any,
    reply: list[Any],
    transform: Transform,
    stream_for: Callable[[bytes], str],
) -> None:
    inputs: list[bytes] = []
    counts: list[int] = []
    ids: list[bytes] = []
    out_keys: list[str] = []
    outputs: list[bytes] = []
    for key, entries in reply:
        inputs.append(key)
        counts.append(len(entries))
        for entry_id, fields in entries:
            out = transform(fields[b"v"])
            k = fields[b"k"]
            ids.append(entry_id)
            out_keys.append(stream_for(k))
            outputs += (out, k)
    script(keys=inputs + out_keys, args=[spec.group, len(inputs), *counts, *ids, *outputs])
