"""A3 and A4: the supervisor of ``streamq run --workers N`` and its children, killed on a
real broker.

A3: the supervisor is SIGKILLed. Nothing is left to forward a stop, so each child must
notice by itself (PR_SET_PDEATHSIG sends it SIGTERM; a watcher thread exits it if it
lingers). The row asks more than the unit test's "the children exit": no orphan keeps
partitions or leases, so the Kafka group ends up with no members (each child left it) and no
Redis lease key of the group survives, and a fresh ``--workers 3`` then handles everything
(I1) in order (I3).

A4 (bounded for CI: six kills about 3 s apart, seeded): a random child is SIGKILLed while
records are produced. Each kill is followed by exactly one restart of that slot, with the
slot's backoff growing (no crash-loop amplification), and in the end every record is
handled (I1, I8), in order within each ownership (I3).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

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

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc (the workers and multiprocessing's
    resource tracker alike)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _holders(broker: Broker, group: str) -> int:
    """Kafka: members of the group; Redis: lease keys of the group."""
    if broker.kind == "kafka":
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": broker.url.removeprefix("kafka://")})
        described = admin.describe_consumer_groups([group], request_timeout=20)[group].result()
        return len(described.members)
    import redis

    return len(redis.Redis.from_url(broker.url).keys(f"streamq:lease:{group}:*"))


def _records(start: int, count: int) -> list[tuple[int, bytes]]:
    return [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(start, start + count)]


def test_killing_the_supervisor_leaves_no_orphan_holding_partitions(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(3)
    group, ledger = unique("a3"), tmp_path / "ledger"
    broker.produce(topic, _records(0, 300))
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.02")

    supervisor = start_worker(tmp_path, spec, env, "--workers", "3")
    try:
        wait_until(lambda: len(_children(supervisor.pid)) >= 3, 60, "three children")
        wait_until(lambda: len(read_ledger(ledger)) >= 30, 90, "the children to handle records")
        children = _children(supervisor.pid)
        holders = _holders(broker, group)
        supervisor.proc.kill()
        assert supervisor.proc.wait(10) == -signal.SIGKILL
    finally:
        code, out = supervisor.finish(10)
    assert holders >= 1, "nobody held the partitions before the kill"

    wait_until(lambda: not any(_alive(p) for p in children), 90, "every orphan to exit")
    wait_until(lambda: _holders(broker, group) == 0, 60, "the group to have no holder left")
    mid = len(read_ledger(ledger))

    broker.produce(topic, _records(300, 150))
    again = start_worker(tmp_path, spec, env, "--workers", "3")
    try:
        wait_until(lambda: {e.id for e in read_ledger(ledger)} >= set(range(450)), 120,
                   "every record after the restart")  # fmt: skip
    finally:
        again.send_signal(signal.SIGTERM)
        code, out = again.finish(60)
    # a stop cut by the deadline dumps every thread of the child: all of it, to see which hung
    # (CI, KIP-848 pass, 2026-12-04: once, a child's stop ended in that dump, code 1)
    assert code == 0, out[-20000:]

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced=set(range(450)), starts=read_ledger(ledger, "S"))
    print(f"\n{broker.kind}: {len(children)} descendants exited, {holders} holders before "
          f"the kill and none after; {mid} handled before the restart; "
          f"{len(dupes)} duplicates")  # fmt: skip


def _started(out: str) -> dict[int, list[int]]:
    """Per worker slot, the pids the supervisor started, in order."""
    slots: dict[int, list[int]] = {}
    for slot, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", out):
        slots.setdefault(int(slot), []).append(int(pid))
    return slots


def test_children_killed_again_and_again_are_restarted_with_backoff(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(4)
    group, ledger = unique("a4"), tmp_path / "ledger"
    # random kills could land twice on one record handled alone: the crash counter would
    # dead-letter it as a killer (it cannot tell an outside kill from one); not here
    spec = ledger_app(extra={"lease_ttl": 3, "crash_limit": 1000})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002")
    rng = random.Random(1604)
    produced: set[int] = set()
    stop = threading.Event()

    def produce() -> None:
        start = 0
        while not stop.is_set():
            broker.produce(topic, _records(start, 100))
            produced.update(range(start, start + 100))
            start += 100
            time.sleep(0.3)

    producer = threading.Thread(target=produce)
    supervisor = start_worker(tmp_path, spec, env, "--workers", "2")
    producer.start()
    killed: list[int] = []
    try:
        wait_until(lambda: len(_started(supervisor.output())) == 2, 60, "two children")
        for _ in range(6):
            time.sleep(rng.uniform(2, 4))
            slot = rng.choice([0, 1])
            victim = _started(supervisor.output())[slot][-1]
            wait_until(lambda v=victim: v in {e.pid for e in read_ledger(ledger, "S")}, 60,
                       "the victim to handle records before it dies")  # fmt: skip
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_until(lambda s=slot, v=victim: _started(supervisor.output())[s][-1] != v, 60,
                       f"slot {slot} to be restarted")  # fmt: skip
        stop.set()
        producer.join(60)
        wait_until(lambda: {e.id for e in read_ledger(ledger)} >= produced, 120,
                   "every record after the kills")  # fmt: skip
    finally:
        stop.set()
        supervisor.send_signal(signal.SIGTERM)
        code, out = supervisor.finish(60)
    assert code == 0, out[-3000:]

    restarts = re.findall(r"worker (\d+) \(pid (\d+)\) exited with (\d+); restarting in "
                          r"([0-9.]+)s \(failure (\d+)\)", out)  # fmt: skip
    assert sorted(int(pid) for _, pid, *_ in restarts) == sorted(killed), restarts
    assert all(code == "137" for _, _, code, _, _ in restarts)
    for slot in ("0", "1"):
        delays = [float(d) for s, _, _, d, _ in restarts if s == slot]
        assert delays == sorted(delays), f"slot {slot}'s backoff shrank: {delays}"
    entries = read_ledger(ledger)
    dupes = check_run(entries, produced=produced, starts=read_ledger(ledger, "S"))
    backoffs = [(s, d) for s, _, _, d, _ in restarts]
    print(f"\n{broker.kind}: {len(killed)} kills, restarts (slot, delay) {backoffs}, "
          f"{len(produced)} records, {len(dupes)} duplicates")  # fmt: skip
