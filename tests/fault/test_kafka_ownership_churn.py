"""A group whose partitions move while they are paused still drains everything (issue 15).

The stall of issue 15 item 2 ("a restarted group that handles nothing"): with back-pressure
pausing partitions most of the time (a small ``max_in_flight``), a partition revoked while
paused and given back to the same member was never fetched again, because librdkafka keeps
a pause through unassign and reassign while the runner forgets it; and an asynchronous
commit that failed in the rebalance was never sent again. Both members then waited on each
other in ``--until-idle`` forever. Here a plain consumer joins the group three times,
takes partitions (usually paused ones) and hands them back; the run must end by itself with
every record handled once or more, in per-key order, and everything committed.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import Broker
from tests.integration.helpers import (
    FAST_GROUP,
    KIP848,
    app_env,
    kafka_committed,
    ledger_app,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.timeout(420)]

TOTAL = 6000


def borrow(bootstrap: str, group: str, topic: str, seconds: float) -> list[int]:
    """Join the group, hold whatever it assigns (handling nothing), leave; what was held."""
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    conf |= {"group.protocol": "consumer"} if KIP848 else {
        "partition.assignment.strategy": "cooperative-sticky", **FAST_GROUP}  # fmt: skip
    held: set[int] = set()

    def on_assign(consumer, parts) -> None:  # type: ignore[no-untyped-def]
        held.update(p.partition for p in parts)
        consumer.incremental_assign(parts)
        consumer.pause(parts)

    consumer = Consumer(conf)
    consumer.subscribe([topic], on_assign=on_assign)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        consumer.consume(10, 0.1)
    consumer.close()
    return sorted(held)


def test_partitions_moved_while_paused_are_drained(
    kafka_bootstrap: str, redis_server, tmp_path: Path
) -> None:
    broker = Broker("kafka", f"kafka://{kafka_bootstrap}", redis_server.url)
    topic = broker.topic(4)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 40}"})) for i in range(TOTAL)]
    broker.produce(topic, records)
    group, ledger = unique("churn"), tmp_path / "ledger"
    spec = ledger_app(extra={"max_in_flight": 64, "max_poll_records": 100})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.001", DEDUP=broker.dedup_url)
    observer = observe(broker, topic, group, 4).start()
    run = start_worker(tmp_path, spec, env, "--workers", "2", "--until-idle", "5")
    bootstrap = broker.url.removeprefix("kafka://")
    try:
        wait_until(lambda: len({e.pid for e in read_ledger(ledger)}) == 2, 90, "both workers")
        borrowed = [borrow(bootstrap, group, topic, 6) for _ in range(3)]
        assert any(borrowed), "the plain member never held a partition: nothing moved"
        code, out = run.finish(300)  # a hang detector: both members must reach idle
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        observer.stop()
    assert code == 0, out[-4000:]
    entries = read_ledger(ledger)
    check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    ends = {p: 0 for p in range(4)}
    for e in read_ledger(ledger):
        ends[e.partition] = max(ends[e.partition], e.offset + 1)
    assert kafka_committed(bootstrap, group, topic, 4) == ends
    print(f"\nborrowed {borrowed}")
