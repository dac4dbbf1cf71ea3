"""Scenarios that must hold on every broker, one test each, run on Kafka and on Redis.

Each takes the ``broker`` fixture (tests/conftest.py), or a broker kind where no broker may
answer. What a broker adds of its own is checked under an ``if`` on ``broker.kind``, beside
what both must do.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import confluent_kafka
import pytest

import streamq
from streamq.murmur2 import partition_for_key
from tests.conftest import Broker, free_port

from .helpers import (
    app_env,
    check_per_key_order,
    end_offsets,
    kafka_committed,
    ledger_app,
    produce_keyed,
    read_ledger,
    redis_group_state,
    start_worker,
    streamq_cmd,
    unique,
)

pytestmark = [pytest.mark.timeout(240)]

LEASES = {"lease_ttl": 3}  # RELIABILITY.md's test size on Redis: 3 s leases, renewed every second


def test_keys_land_on_the_partition_kafka_would_choose(broker: Broker) -> None:
    """Kafka's murmur2 partitioner on both: a key has one partition number whatever the
    broker, so a group can move between them without reordering a key."""
    topic = broker.topic(7)
    with streamq.Producer(broker.url) as producer:
        metas = [producer.send(topic, b"x", key=f"key-{i}").result(30) for i in range(60)]
    for i, meta in enumerate(metas):
        key = f"key-{i}".encode()
        assert meta.partition == partition_for_key(key, 7) == confluent_kafka.murmur2(key, 7)


def test_done_when_two_workers_handle_everything_once(broker: Broker, tmp_path: Path) -> None:
    """The issue's acceptance run: topics create, 20,000 keyed records, --workers 2
    --until-idle 5; every record handled once, in per-key order, and all of it committed."""
    topic = unique("orders")
    command = streamq_cmd("topics", "create", topic, "--partitions", "4", "--broker", broker.url)
    made = subprocess.run(command, capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    ends = end_offsets(produce_keyed(broker.url, topic, 20_000))
    group, ledger = unique("billing"), tmp_path / "ledger"
    spec = ledger_app(extra=LEASES if broker.kind == "redis" else None)
    started = time.monotonic()
    worker = start_worker(tmp_path, spec, app_env(broker.url, topic, group, ledger),
                          "--workers", "2", "--until-idle", "5")  # fmt: skip
    code, err = worker.finish(180)
    assert code == 0, err
    entries = read_ledger(ledger)
    assert sorted(e.id for e in entries) == list(range(20_000)), "lost or duplicated records"
    check_per_key_order(entries)
    if broker.kind == "kafka":
        found = kafka_committed(broker.url.removeprefix("kafka://"), group, topic, 4)
        committed = {p: (offset if offset >= 0 else None) for p, offset in found.items()}
        assert committed == {p: ends.get(p) for p in range(4)}
    else:
        state = redis_group_state(broker.url, group, topic, 4)
        assert len(state) == 4 and all(s["pending"] == 0 and s["lag"] == 0 for s in state)
    span = (max(e.mono_ns for e in entries) - min(e.mono_ns for e in entries)) / 1e9
    print(
        f"\n{broker.kind}, 20,000 records: {20_000 / max(span, 1e-9):,.0f} records/s while "
        f"handling; whole run {time.monotonic() - started:.1f}s; workers: "
        f"{len({e.pid for e in entries})}"
    )


UNREACHABLE = {
    "kafka": ("kafka://127.0.0.1:{port}", "cannot reach Kafka"),
    "redis": ("redis://127.0.0.1:{port}/0", "cannot reach Redis"),
}


@pytest.mark.parametrize(
    "kind", [pytest.param("kafka", marks=pytest.mark.kafka),
             pytest.param("redis", marks=pytest.mark.redis)],
)  # fmt: skip
def test_unreachable_broker_at_start_exits_cleanly(kind: str, tmp_path: Path) -> None:
    """C3: no broker on the port; the worker retries for STREAMQ_BROKER_TIMEOUT, then exits 1
    with a line that names the broker, and no traceback."""
    url, says = UNREACHABLE[kind]
    env = app_env(url.format(port=free_port()), "t", "g", tmp_path / "ledger",
                  STREAMQ_BROKER_TIMEOUT="3")  # fmt: skip
    code, err = start_worker(tmp_path, ledger_app(), env).finish(60)
    assert code == 1, err
    assert says in err and "retrying in" in err
    assert "Traceback" not in err
