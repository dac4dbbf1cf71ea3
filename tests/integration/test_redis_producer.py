"""The Redis producer on a real redis-server: senders on many threads, one writer, no loss.

Senders append to a deque and wake the writer only when it sleeps; these tests check that
nothing is lost or reported twice however appends and trips interleave, that ``flush`` and
``close`` wait for what came before them, and that a stream lookup while Redis is down
reports the output refused (the outbox publishes it again) instead of raising half-queued.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter

import pytest
import redis

from streamq.brokers import connect
from streamq.brokers.redis import producer as redis_producer
from streamq.errors import BrokerUnavailable, UnknownTopicOrPartition
from streamq.pipeline import Output
from tests.conftest import RedisServer, free_port

from .helpers import unique

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

THREADS, EACH = 4, 2500


def test_outputs_published_from_many_threads_are_each_written_and_reported_once(
    redis_url: str,
) -> None:
    broker = connect(redis_url)
    topic = unique("prod")
    broker.admin().create_topic(topic, 3)
    producer = broker.producer()
    reports: Counter[object] = Counter()
    lock = threading.Lock()

    def delivered(exc: BaseException | None, out: Output | None) -> None:
        with lock:
            reports[exc is None] += 1

    def publish(t: int) -> None:
        for i in range(EACH):
            key = f"k{i % 50}".encode()
            producer.publish([Output(topic, f"{t}:{i}".encode(), key, None)], delivered)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert producer.flush(30) == 0
    assert reports == {True: THREADS * EACH}  # every one acknowledged, none twice
    r = redis.Redis.from_url(redis_url)
    values = [f[b"v"] for p in range(3) for _, f in r.xrange(f"{topic}:{p}")]
    assert len(values) == len(set(values)) == THREADS * EACH
    producer.close()


def test_close_writes_what_was_sent_before_it(redis_url: str) -> None:
    broker = connect(redis_url)
    topic = unique("prod")
    broker.admin().create_topic(topic, 1)
    producer = broker.producer()
    futures = [producer.send(topic, b"%d" % i) for i in range(500)]
    producer.close()
    assert [f.result(0).offset for f in futures] == sorted(f.result(0).offset for f in futures)
    assert redis.Redis.from_url(redis_url).xlen(f"{topic}:0") == 500


def test_a_partition_the_topic_lacks_raises_before_anything_is_queued(redis_url: str) -> None:
    broker = connect(redis_url)
    topic = unique("prod")
    broker.admin().create_topic(topic, 2)
    producer = broker.producer()
    told: list[object] = []
    good, bad = Output(topic, b"a", None, None, 1), Output(topic, b"b", None, None, 5)
    with pytest.raises(UnknownTopicOrPartition, match="no partition 5"):
        producer.publish([good, bad], lambda exc, out: told.append(exc))
    assert producer.flush(10) == 0 and told == []
    assert redis.Redis.from_url(redis_url).xlen(f"{topic}:1") == 0  # not even the good one
    producer.close()


def test_a_stream_lookup_with_redis_down_reports_the_output_refused() -> None:
    broker = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    producer = broker.producer()
    told: list[tuple[BaseException | None, Output | None]] = []
    out = Output("prod-down", b"x", b"k", None)
    producer.publish([out], lambda exc, o: told.append((exc, o)))  # does not raise
    assert len(told) == 1 and isinstance(told[0][0], BrokerUnavailable) and told[0][1] is out
    assert producer.flush(5) == 0  # nothing was queued for the writer
    producer.close()


def test_senders_wait_for_a_writer_that_cannot_keep_up(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen redis-server holds the writer: past the bound, a sender waits instead of
    queueing without end, and goes on once the writer has written down to half of it."""
    monkeypatch.setattr(redis_producer, "MAX_PENDING", 200)
    broker = connect(redis_server.url)
    topic = unique("prod")
    broker.admin().create_topic(topic, 1)
    producer = broker.producer()
    told: list[object] = []
    sent = threading.Event()

    def send() -> None:
        for i in range(1000):
            producer.publish([Output(topic, b"%d" % i, None, None)], lambda e, o: told.append(e))
        sent.set()

    producer.publish([Output(topic, b"first", None, None)], lambda e, o: told.append(e))
    assert producer.flush(10) == 0 and told == [None]  # the topic's streams are known now
    told.clear()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert not sent.wait(2.0)  # held at the bound, not queueing all 1,000
        assert 100 < len(producer._pending) <= 201  # queued up to the bound, no further
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert sent.wait(30)
    assert producer.flush(30) == 0
    assert told == [None] * 1000
    assert redis.Redis.from_url(redis_server.url).xlen(f"{topic}:0") == 1001
    producer.close()
