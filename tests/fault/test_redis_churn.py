"""B3, B6 and B10 on Redis: lease-owned partitions moving under back-pressure.

Two members start at the same instant (B10: both race for every lease with ``SET NX PX``);
records keep arriving; a third member joins and leaves again on a seeded random schedule
(B3, bounded for CI: four cycles of 2-5 s with 3 s leases); every member runs with a
``max_in_flight`` of 64, so most partitions are paused by back-pressure when they move (B6).
The two first members run with ``--until-idle``: they must end by themselves, so a partition
left stalled or paused after it drained fails the run. A thread samples every lease key ten
times a second, and no member may handle a partition while another holds its lease (I6,
``check_leases``); the ledger checks I1, I3 and I6, the commit observer I2.

Kafka has its own rows for these: ``test_kafka_ownership_churn.py`` (B6) and
``test_membership.py`` (B1, B2); the members' simultaneous join is the broker's business there.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

from tests.conftest import Broker
from tests.integration.helpers import (
    app_env,
    ledger_app,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_leases, check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

PARTITIONS = 4
SEED = 1603


class LeaseSampler:
    """Reads every lease key of the group ten times a second: who held which partition."""

    def __init__(self, url: str, group: str, topic: str) -> None:
        self._r = redis.Redis.from_url(url)
        self._keys = [f"streamq:lease:{group}:{topic}:{p}" for p in range(PARTITIONS)]
        self.samples: list[tuple[int, int, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            before = time.monotonic_ns()
            values = self._r.mget(self._keys)
            after = time.monotonic_ns()
            for partition, token in enumerate(values):
                # token: "<host>-<pid>-<member uuid>:<lease uuid>"
                pid = None if token is None else int(token.split(b":")[0].rsplit(b"-", 2)[1])
                self.samples.append((before, after, partition, pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_members_racing_for_leases_and_churning_under_back_pressure(
    redis_server, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    topic = broker.topic(PARTITIONS)
    group, ledger = unique("b3"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, "max_in_flight": 64,
                                      "max_poll_records": 100})  # fmt: skip
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002")
    rng = random.Random(SEED)
    produced: set[int] = set()

    def produce(start: int, count: int) -> None:
        broker.produce(topic, [(i, orjson.dumps({"i": i, "k": f"k{i % 40}"}))
                               for i in range(start, start + count)])  # fmt: skip
        produced.update(range(start, start + count))

    produce(0, 2000)
    leases = LeaseSampler(broker.url, group, topic)
    observer = observe(broker, topic, group, PARTITIONS).start()
    guests: list[int] = []
    try:
        members = [start_worker(tmp_path, spec, env, "--until-idle", "6") for _ in range(2)]
        wait_until(lambda: len({e.pid for e in read_ledger(ledger)}) == 2, 60, "both members")
        for cycle in range(4):
            produce(2000 + cycle * 1000, 1000)
            guest = start_worker(tmp_path, spec, env)
            guests.append(guest.pid)
            time.sleep(rng.uniform(2, 5))
            guest.send_signal(signal.SIGTERM)
            code, out = guest.finish(60)
            assert code == 0, out[-3000:]
            time.sleep(rng.uniform(0.5, 2))
        results = [m.finish(180) for m in members]  # a hang detector: both must go idle
    finally:
        leases.stop()
        observer.stop()
    for code, out in results:
        assert code == 0, out[-3000:]
    paused = sum(int(n) for _, out in results for n in re.findall(r"paused (\d+) times", out))
    assert paused > 0, "back-pressure never paused a partition: B6 did not happen"
    holders = {pid for *_, pid in leases.samples if pid is not None}
    assert holders & set(guests), "no guest ever held a lease: nothing moved"

    entries, starts = read_ledger(ledger), read_ledger(ledger, "S")
    dupes = check_run(entries, produced=produced, starts=starts)
    held = check_leases(leases.samples, starts, entries)
    checked = check_commits(observer.samples, entries)
    assert not broker.uncommitted(topic, group, Broker.ends({
        e.id: (e.partition, e.offset) for e in entries}))  # fmt: skip
    print(f"\nseed {SEED}: {len(produced)} records, {len(dupes)} duplicates, paused {paused} "
          f"times, {len(holders & set(guests))} guests held leases, {held} lease samples "
          f"and {checked} commit samples checked")  # fmt: skip
