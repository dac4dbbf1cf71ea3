"""B9: the Redis zombie, with the heir killed before it handles what it reclaimed.

The lease holder is frozen (SIGSTOP) past its lease with entries in flight. An heir takes the
lease, reclaims the zombie's pending entries (XAUTOCLAIM) and dies (a failpoint right after
its first poll) before handling any of them. The zombie wakes: its handlers finish, but its
acknowledgements are refused by the fenced Lua XACK, so its in-flight entries must still be
in the group's pending entries list (read with XPENDING). A third member then handles them:
nothing is lost (I1), and only the zombie's in-flight entries run twice.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest
import redis

from streamq.brokers.redis.entries import id_to_offset
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

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


def test_a_zombies_acks_are_refused_after_its_heir_died_unhandled(
    redis_server, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    topic = broker.topic(1)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(400)]
    broker.produce(topic, records)
    group, ledger = unique("b9"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, "max_poll_records": 20})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.05")
    client = redis.Redis.from_url(broker.url)

    def pending() -> set[int]:
        entries = client.xpending_range(f"{topic}:0", group, "-", "+", 10_000)
        return {id_to_offset(e["message_id"]) for e in entries}

    with observe(broker, topic, group, 1) as observer:
        zombie = start_worker(tmp_path, spec, env)
        wait_until(lambda: len(read_ledger(ledger)) > 40, 60, "the owner to be busy")
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # a ledger line being written shows up in full
        started = {(e.offset, e.id) for e in read_ledger(ledger, "S") if e.pid == zombie.pid}
        done = {(e.offset, e.id) for e in read_ledger(ledger) if e.pid == zombie.pid}
        in_flight = started - done
        assert in_flight, "the owner froze with nothing in flight"
        unacked = pending()  # delivered to the zombie and not acknowledged: the zombie's work
        assert {off for off, _ in in_flight} <= unacked

        heir = start_worker(tmp_path, spec, {**env, "STREAMQ_FAILPOINTS": "after_poll:exit@1"})
        code, out = heir.finish(60)  # it takes the lease after the zombie's expired, then dies
        assert code == 137 and "failpoint after_poll fired" in out, out[-3000:]
        assert heir.pid not in {e.pid for e in read_ledger(ledger, "S")}, "the heir handled"
        owners = {e["consumer"] for e in client.xpending_range(f"{topic}:0", group, "-", "+", 10)}
        assert len(owners) == 1 and owners != {b""}, owners  # reclaimed into the heir's name

        zombie.send_signal(signal.SIGCONT)
        wait_until(lambda: {e.id for e in read_ledger(ledger)} >= {i for _, i in in_flight}, 30,
                   "the zombie's running handlers to finish")  # fmt: skip
        wait_until(lambda: "lost" in zombie.output() or "refused" in zombie.output(), 30,
                   "the zombie to learn it lost its lease")  # fmt: skip
        still = pending()
        assert {off for off, _ in in_flight} <= still, (
            "the zombie acknowledged entries after losing its lease"
        )
        zombie.send_signal(signal.SIGTERM)
        zcode, zout = zombie.finish(60)
        assert "Traceback" not in zout, zout[-3000:]

        code, out = start_worker(tmp_path, spec, env, "--until-idle", "3").finish(180)
        assert code == 0, out[-3000:]

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"),
                      overlap_ok={zombie.pid})  # fmt: skip
    check_commits(observer.samples, entries)
    assert set(dupes) <= {i for _, i in in_flight} | {
        e.id for e in entries if e.pid == zombie.pid and e.offset in unacked
    }, "records beyond the zombie's unacknowledged work ran twice"
    assert pending() == set()
    print(f"\nzombie had {len(in_flight)} in flight; {len(dupes)} handled twice; exit {zcode}")
