"""C4 and C7: the network between a worker and a healthy broker misbehaves.

C4 (both brokers): the worker reaches its broker only through ``FaultProxy``. Mid-run the proxy
blackholes every byte for 15 s (past the 6 s Kafka session and the 3 s Redis lease: only the
client's own socket and request timeouts can notice), then resets every connection for 4 s,
then passes again. Records produced before, during and after (straight to the broker) are all
handled, nothing is committed ahead of its handling (I2), what was committed before the fault
is never handled again, and the committed positions reach the end afterwards: no "commits
stop forever" (faust #736).

C7 (Redis): the proxy drops the reply to one XREADGROUP that carried entries and resets the
connection. Those entries sit in the worker's PEL and never reached it; the worker must re-read
its own PEL after reconnecting, not leave them until a lease changes hands (one worker, so no
lease ever would).

Kafka listens on a third listener, advertised at the proxy's port, so the client's every
connection (bootstrap, then the node it learns from metadata) crosses the proxy; the test and
its observer use the plain listener.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streamq.testing.kafka import BASE_SETTINGS
from tests.conftest import Broker, free_port, own_kafka
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
from .proxy import FaultProxy

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


@dataclass
class Proxied:
    broker: Broker  # straight to the broker: the test's producer and observer
    proxy: FaultProxy
    worker_url: str  # through the proxy: the worker


@pytest.fixture(params=["kafka", "redis"])
def proxied(request: pytest.FixtureRequest, redis_server) -> Iterator[Proxied]:
    if request.param == "redis":
        with FaultProxy(redis_server.port) as proxy:
            yield Proxied(
                Broker("redis", redis_server.url, redis_server.url),
                proxy,
                f"redis://127.0.0.1:{proxy.port}/0",
            )
        return
    inner = free_port()
    with FaultProxy(inner) as proxy:
        own = "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
        settings = {
            "listeners": f"{own},PROXIED://127.0.0.1:{inner}",
            "advertised.listeners": f"{own},PROXIED://127.0.0.1:{proxy.port}",
            "listener.security.protocol.map": BASE_SETTINGS["listener.security.protocol.map"]
            + ",PROXIED:PLAINTEXT",
        }
        with own_kafka(1, settings=settings) as cluster:
            yield Proxied(
                Broker("kafka", cluster.url, redis_server.url),
                proxy,
                f"kafka://127.0.0.1:{proxy.port}",
            )


def _records(start: int, count: int) -> list[tuple[int, bytes]]:
    return [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(start, start + count)]


def test_blackhole_then_reset_then_restore_loses_nothing_and_commits_resume(
    proxied: Proxied, tmp_path: Path
) -> None:
    broker, proxy = proxied.broker, proxied.proxy
    topic = broker.topic(2)
    group, ledger = unique("c4"), tmp_path / "ledger"
    coords = broker.produce(topic, _records(0, 200))
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(proxied.worker_url, topic, group, ledger, HANDLER_SLEEP="0.01")
    during: dict[int, tuple[int, int]] = {}

    def produce_during_the_fault() -> None:
        for start in range(200, 400, 50):
            during.update(broker.produce(topic, _records(start, 50)))
            time.sleep(3)

    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, env)
        try:
            wait_until(lambda: not broker.uncommitted(topic, group, Broker.ends(coords)), 90,
                       "the first 200 records handled and committed")  # fmt: skip
            proxy.set("blackhole")
            blackholed_at = proxy.counters.blackholed
            producer = threading.Thread(target=produce_during_the_fault)
            producer.start()
            time.sleep(15)
            assert proxy.counters.blackholed > blackholed_at, "nothing was sent into the blackhole"
            handled_in_hole = len(read_ledger(ledger))
            proxy.set("reset")
            time.sleep(4)
            assert proxy.counters.resets > 0, "no connection was reset"
            proxy.set("pass")
            producer.join(60)
            coords.update(during)
            coords.update(broker.produce(topic, _records(400, 100)))
            wait_until(lambda: {e.id for e in read_ledger(ledger)} >= set(range(500)), 120,
                       "every record after the network came back")  # fmt: skip
            ends = Broker.ends(coords)
            wait_until(lambda: not broker.uncommitted(topic, group, ends), 60,
                       "the committed positions to reach the end")  # fmt: skip
        finally:
            worker.send_signal(15)
            code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    assert len(coords) == 500

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced=set(range(500)), starts=read_ledger(ledger, "S"),
                      rewinds_within_a_member=True)  # fmt: skip
    assert not [i for i in dupes if i < 200], "records committed before the fault came again"
    checked = check_commits(observer.samples, entries)
    c = proxy.counters
    print(f"\n{broker.kind}: blackholed {c.blackholed} B, {c.resets} resets, {c.accepted} "
          f"connections; {handled_in_hole} handled by the end of the blackhole; "
          f"{len(dupes)} duplicates; {checked} commit samples checked")  # fmt: skip


def test_a_lost_xreadgroup_reply_is_re_read_from_the_members_own_pel(
    redis_server, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    topic = broker.topic(1)
    group, ledger = unique("c7"), tmp_path / "ledger"
    with FaultProxy(redis_server.port) as proxy:
        spec = ledger_app(extra={"lease_ttl": 3})
        env = app_env(f"redis://127.0.0.1:{proxy.port}/0", topic, group, ledger)
        worker = start_worker(tmp_path, spec, env)
        try:
            broker.produce(topic, _records(0, 20))
            wait_until(lambda: len({e.id for e in read_ledger(ledger)}) >= 20, 60,
                       "the first records")  # fmt: skip
            proxy.drop_reply_after(b"XREADGROUP")
            coords = broker.produce(topic, _records(20, 30))
            wait_until(lambda: proxy.counters.dropped_replies, 30, "an XREADGROUP reply to drop")
            lost_ids = re.findall(rb"\d+-\d+", proxy.counters.dropped_replies[0])
            assert lost_ids, "the dropped reply carried no entries"
            wait_until(lambda: {e.id for e in read_ledger(ledger)} >= set(range(50)), 60,
                       "the entries of the lost reply")  # fmt: skip
            wait_until(lambda: not broker.uncommitted(topic, group, Broker.ends(coords)), 30,
                       "the PEL to drain")  # fmt: skip
        finally:
            worker.send_signal(15)
            code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    entries = read_ledger(ledger)
    assert {e.pid for e in entries} == {worker.pid}, "another member handled the entries"
    check_run(entries, produced=set(range(50)), starts=read_ledger(ledger, "S"))
    print(f"\nredis: dropped one reply with {len(lost_ids)} entry ids, {proxy.counters.resets} "
          "reset; all re-read from the member's own PEL")  # fmt: skip
