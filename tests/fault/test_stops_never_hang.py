"""A stop always ends: during rebalances and during broker outages, many times (issue 15).

A worker that deadlocked in ``close()`` (librdkafka #4041, reached through a rebalance
callback served inside ``close()`` while a peer left) never exited and outlived its
supervisor. These tests stop workers at the moments that provoked it, round after round, on
both brokers, and require each stop to end on its own with a clean exit code and no
traceback (0; or 3 when the broker is down: the stop gave up on the final commit within its
budget and said so); the bound they wait is a hang detector, not a speed test. Each round
first asserts its fault: the stopped worker had just been revoked by the rebalance a joining
peer caused, or the broker process was dead when the stop began. At the end the group drains
the backlog and the ledger shows every record handled, in per-key order.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import Broker
from tests.integration.helpers import (
    app_env,
    group_settings,
    ledger_app,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import CommitObserver, check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

SHUTDOWN = 4.0
HANG = SHUTDOWN + 45  # past every deadline of a stop (shutdown_timeout + 25 at most)
TOTAL = 6000


def _produce(broker: Broker, partitions: int) -> tuple[str, set[int]]:
    topic = broker.topic(partitions)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 40}"})) for i in range(TOTAL)]
    broker.produce(topic, records)
    return topic, {i for i, _ in records}


def _stopped(worker, what: str, codes: tuple[int, ...] = (0,)) -> int:  # type: ignore[no-untyped-def]
    code, out = worker.finish(HANG)
    assert code in codes, f"{what}: exit code {code}\n{out[-4000:]}"
    assert "Traceback" not in out, f"{what}\n{out[-4000:]}"
    return code


def _owned(out: str) -> set[int]:
    """The partitions a worker holds now, from its assigned / revoked / lost lines."""
    held: set[int] = set()
    for line in out.splitlines():
        for event in (": assigned ", ": revoked ", ": lost "):
            if event in line:
                parts = {int(p) for p in re.findall(r"\[(\d+)\]", line.split(event, 1)[1])}
                held = held | parts if event == ": assigned " else held - parts
    return held


def _drain(
    tmp_path: Path, spec: str, env: dict[str, str], ledger: Path, ids: set[int],
    observer: CommitObserver,
) -> None:  # fmt: skip
    try:
        code, out = start_worker(tmp_path, spec, env, "--until-idle", "3").finish(240)
    finally:
        observer.stop()  # started with the test's first worker
    assert code == 0, out[-4000:]
    entries = read_ledger(ledger)
    check_run(entries, produced=ids, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)


def test_stops_while_the_group_rebalances_never_hang(broker, tmp_path: Path) -> None:
    topic, ids = _produce(broker, 4)
    group, ledger = unique("stops"), tmp_path / "ledger"
    spec = ledger_app(extra={"shutdown_timeout": SHUTDOWN, "lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002")
    observer = observe(broker, topic, group, 4).start()
    older = start_worker(tmp_path, spec, env)
    try:
        wait_until(lambda: len(read_ledger(ledger)) > 50, 90, "the first worker to handle records")
        for round_ in range(6):
            wait_until(
                lambda w=older: len(_owned(w.output())) == 4, 90, "one worker to own everything"
            )
            revokes = older.output().count(": revoked ")
            newer = start_worker(tmp_path, spec, env)  # its join rebalances the group
            wait_until(
                lambda w=older, n=revokes: w.output().count(": revoked ") > n,
                90,
                f"round {round_}: the joining worker's rebalance to revoke from the older one",
            )
            older.send_signal(signal.SIGTERM)  # ... which now stops in the middle of it
            _stopped(older, f"round {round_}: a stop during a rebalance")
            older = newer
    finally:
        older.send_signal(signal.SIGTERM)
        _stopped(older, "the last worker")
    _drain(tmp_path, spec, env, ledger, ids, observer)


def test_stops_during_a_kafka_outage_never_hang(private_kafka, tmp_path: Path) -> None:
    node = private_kafka.nodes[0]
    kafka = Broker("kafka", private_kafka.url, "")
    topic, ids = _produce(kafka, 2)
    group, ledger = unique("stops-out"), tmp_path / "ledger"
    # A 3 s session (classic protocol; KIP-848 keeps the broker's 6 s): the final commit gives
    # up when the session ends, inside the stop's budget as with the defaults (10 s session,
    # 30 s shutdown_timeout), and the restarted coordinator drops the stopped member sooner.
    spec = ledger_app(extra={"shutdown_timeout": SHUTDOWN}, kafka=group_settings(3000))
    env = app_env(kafka.url, topic, group, ledger, HANDLER_SLEEP="0.002")
    observer = observe(kafka, topic, group).start()
    for round_ in range(3):
        worker = start_worker(tmp_path, spec, env)
        handled = len(read_ledger(ledger))
        try:
            wait_until(lambda n=handled: len(read_ledger(ledger)) > n + 50, 90, "records handled")
            node.kill()
            assert not node.alive(), "the broker survived SIGKILL"
            time.sleep(1.0)  # the client notices: connections refused, the coordinator gone
            worker.send_signal(signal.SIGTERM)
            # 3: the final commit could not reach the coordinator within the stop's budget
            _stopped(worker, f"round {round_}: a stop while the broker is down", (0, 3))
        finally:
            if worker.proc.poll() is None:
                worker.proc.kill()
            private_kafka.restart(node)
    _drain(tmp_path, spec, env, ledger, ids, observer)


def test_stops_during_a_redis_outage_never_hang(redis_server, tmp_path: Path) -> None:
    redis = Broker("redis", redis_server.url, redis_server.url)
    topic, ids = _produce(redis, 2)
    group, ledger = unique("stops-out"), tmp_path / "ledger"
    spec = ledger_app(extra={"shutdown_timeout": SHUTDOWN, "lease_ttl": 3})
    env = app_env(redis.url, topic, group, ledger, HANDLER_SLEEP="0.002", DEDUP=redis.url)
    observer = observe(redis, topic, group).start()
    for round_ in range(3):
        worker = start_worker(tmp_path, spec, env)
        handled = len(read_ledger(ledger))
        try:
            wait_until(lambda n=handled: len(read_ledger(ledger)) > n + 50, 90, "records handled")
            redis_server.kill()
            assert redis_server.proc is not None and redis_server.proc.poll() is not None
            time.sleep(1.0)
            worker.send_signal(signal.SIGTERM)
            _stopped(worker, f"round {round_}: a stop while Redis is down", (0, 3))
        finally:
            if worker.proc.poll() is None:
                worker.proc.kill()
            redis_server.start()  # durable: the streams, groups and dedup marks come back
    _drain(tmp_path, spec, env, ledger, ids, observer)
