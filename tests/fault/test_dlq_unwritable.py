"""C9: the DLQ cannot be written when a poison record arrives.

The poison's partition must stop there: nothing at or past it is committed (Kafka) or
acknowledged (Redis), and no later record of that partition is handled, while the DLQ write is
retried with backoff in rate-limited log lines; the other partition flows. Once the DLQ can
be written again the record lands there exactly once and the partition goes on (I1, I2, I5).

The fault: Kafka, a node with topic auto-creation off and no DLQ topic yet; Redis, the DLQ's
stream key taken by a string, so XADD fails with WRONGTYPE. The fix: create the topic; delete
the key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Broker, own_kafka
from tests.integration.helpers import (
    app_env,
    ledger_app,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

POISON = 150  # the id of the one undecodable record, in the middle of partition 0


@pytest.fixture(params=["kafka", "redis"])
def strict_broker(request: pytest.FixtureRequest, redis_server) -> Iterator[Broker]:
    """A broker on which a missing DLQ cannot come into being by itself."""
    if request.param == "redis":
        yield Broker("redis", redis_server.url, redis_server.url)
        return
    with own_kafka(1, settings={"auto.create.topics.enable": "false"}) as cluster:
        yield Broker("kafka", cluster.url, redis_server.url)


def _block(broker: Broker, dlq: str) -> None:
    from streamq.brokers import connect

    if broker.kind == "redis":
        import redis

        connect(broker.url).admin().create_topic(dlq, 1)
        redis.Redis.from_url(broker.url).set(f"{dlq}:0", b"not a stream")
    # Kafka: the topic does not exist, and the node will not create it


def _unblock(broker: Broker, dlq: str) -> None:
    from streamq.brokers import connect

    if broker.kind == "redis":
        import redis

        redis.Redis.from_url(broker.url).delete(f"{dlq}:0")
    else:
        connect(broker.url).admin().create_topic(dlq, 1)


def test_the_partition_waits_at_a_poison_record_until_the_dlq_can_be_written(
    strict_broker: Broker, tmp_path: Path
) -> None:
    broker = strict_broker
    topic = broker.topic(2)
    dlq = f"{topic}.dlq"
    records = [
        (i, b"not json" if i == POISON else orjson.dumps({"i": i, "k": f"k{i % 20}"}))
        for i in range(300)
    ]
    good = {i for i, _ in records} - {POISON}
    coords = broker.produce(topic, records)
    poison_p, poison_off = coords[POISON]
    _block(broker, dlq)

    group, ledger = unique("c9"), tmp_path / "ledger"
    # a missing topic fails a produce after 1 s instead of librdkafka's 30 s
    kafka = {"topic.metadata.propagation.max.ms": 1000}
    spec = ledger_app(extra={"lease_ttl": 3}, kafka=kafka)
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.001")
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, env)
        try:
            wait_until(lambda: worker.output().count(f"DLQ write to {dlq}") >= 3, 90,
                       "the DLQ write to fail and be retried")  # fmt: skip
            before = [e for e in read_ledger(ledger) if e.partition == poison_p]
            assert before and max(e.offset for e in before) < poison_off
            time.sleep(2)  # a few more retries and commit intervals with the DLQ still away
            blocked_until = time.monotonic_ns()
            past = [e for e in read_ledger(ledger)
                    if e.partition == poison_p and e.offset > poison_off]  # fmt: skip
            assert past == [], "records after the poison were handled before it was dead-lettered"
            _unblock(broker, dlq)
            wait_until(lambda: {e.id for e in read_ledger(ledger)} >= good, 90, "every record")
        finally:
            worker.send_signal(15)
            code, out = worker.finish(60)
    assert code == 0, out[-3000:]

    while_blocked = [s for s in observer.samples
                     if s.partition == poison_p and s.t_ns < blocked_until]  # fmt: skip
    assert while_blocked, "no sample of the poison's partition while the DLQ was away"
    for s in while_blocked:
        done = s.committed > poison_off and (s.pending is None or poison_off not in s.pending)
        assert not done, f"the poison's partition was committed past it while the DLQ was away: {s}"
    retries = out.count(f"DLQ write to {dlq}")
    assert retries <= 12, f"{retries} DLQ failure lines: not rate-limited"  # 5 per 10 s

    entries = read_ledger(ledger)
    check_run(entries, produced=good | {POISON}, poison={POISON}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert broker.dlq_origins(topic) == [(poison_p, poison_off)]
    print(f"\n{broker.kind}: {retries} DLQ failure lines, {len(while_blocked)} samples held")
