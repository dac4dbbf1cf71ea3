"""Invariant: killing a partition leader of a replicated cluster loses nothing, keeps order.

Apache Kafka only, on three nodes of the test's own (replication factor 3,
``min.insync.replicas=2``). A producer (streamq's: ``acks=all``, idempotent) writes numbered
keyed records for the whole run while a worker handles them. Mid-run the node leading
partition 0 is SIGKILLed (asserted: it is gone and another node leads partition 0), later
restarted. The producer and the group carry on; every acknowledged record is handled, in
per-key order, and nothing the producer was told failed is counted as produced.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

import streamq
from tests.conftest import Broker
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

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


class Feeder(threading.Thread):
    """Numbered records at a steady rate; only acknowledged ids count as produced."""

    def __init__(self, url: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.url, self.topic = url, topic
        self.stop = threading.Event()
        self.acked: set[int] = set()
        self.failed: set[int] = set()
        self.sent = 0

    def run(self) -> None:
        with streamq.Producer(self.url, kafka={"acks": "all"}) as producer:
            while not self.stop.is_set():
                i = self.sent
                fut = producer.send(self.topic, {"i": i, "k": f"k{i % 20}"}, key=f"k{i % 20}")
                fut.add_done_callback(lambda f, i=i: self._done(f, i))
                self.sent += 1
                time.sleep(0.002)
            producer.flush(120)

    def _done(self, fut, i: int) -> None:
        (self.failed if fut.exception() is not None else self.acked).add(i)


def leader(bootstrap: str, topic: str, partition: int) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=20)
    return int(meta.topics[topic].partitions[partition].leader)


def test_partition_leader_killed_mid_run_loses_nothing(kafka_cluster3, tmp_path: Path) -> None:
    kafka = Broker("kafka", kafka_cluster3.url, "")
    topic = kafka.topic(4)
    group, ledger = unique("leader"), tmp_path / "ledger"
    spec = ledger_app()
    observer = observe(kafka, topic, group, 4).start()
    worker = start_worker(tmp_path, spec, app_env(kafka.url, topic, group, ledger))
    feeder = Feeder(kafka.url, topic)
    feeder.start()
    try:
        wait_until(lambda: len(read_ledger(ledger)) > 1000, 90, "records to flow")
        victim = kafka_cluster3.node(leader(kafka_cluster3.bootstrap, topic, 0))
        victim.kill()
        assert not victim.alive(), "the leader survived SIGKILL"
        survivors = ",".join(n.bootstrap for n in kafka_cluster3.nodes if n is not victim)
        wait_until(
            lambda: leader(survivors, topic, 0) not in (victim.node_id, -1),
            60,
            "a new leader for partition 0",
        )
        handled = len(read_ledger(ledger))
        wait_until(lambda: len(read_ledger(ledger)) > handled + 1000, 90, "handling to go on")
        kafka_cluster3.restart(victim)
        time.sleep(2)
    finally:
        feeder.stop.set()
        feeder.join(180)
    assert not feeder.is_alive(), "the producer did not finish"
    assert feeder.acked, "nothing was acknowledged"
    wait_until(
        lambda: {e.id for e in read_ledger(ledger)} >= feeder.acked, 180, "every acked record"
    )
    worker.send_signal(signal.SIGTERM)
    code, out = worker.finish(90)
    observer.stop()
    assert code == 0, out[-3000:]
    entries = read_ledger(ledger)
    # the killed node may be the group coordinator too: the member's session then ends, its
    # partitions are lost and given back to it, and it starts again from its commits
    check_run(entries, produced=feeder.acked, starts=read_ledger(ledger, "S"),
              rewinds_within_a_member=True)  # fmt: skip
    check_commits(observer.samples, entries)
    print(f"\n{len(feeder.acked)} acked, {len(feeder.failed)} failed of {feeder.sent} sent")
