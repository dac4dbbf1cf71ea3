"""C8: the dedup store's Redis freezes (SIGSTOP) mid-run, then comes back.

A failed check must mean "not seen" (a record is never skipped because the store is away), a
failed mark must not hold commits back, handling must go on while the store is frozen, and
the store must be used again once it answers (I1; extra duplicates are allowed). The store is
a Redis of its own, apart from the broker; it also keeps the crash counter here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest
import redis

from tests.conftest import Broker, RedisServer, free_port
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

TOTAL = 6000


def test_a_frozen_dedup_store_never_skips_or_blocks_records(broker, tmp_path: Path) -> None:
    store = RedisServer(free_port(), tmp_path / "store", durable=False)
    (tmp_path / "store").mkdir()
    store.start()
    try:
        _run(broker, store, tmp_path)
    finally:
        if store.proc is not None:
            os.kill(store.proc.pid, signal.SIGCONT)
        store.kill()


def _run(broker: Broker, store: RedisServer, tmp_path: Path) -> None:
    topic = broker.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(TOTAL)]
    broker.produce(topic, records)
    group, ledger = unique("c8"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002", DEDUP=store.url)
    assert store.proc is not None
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, env)
        try:
            wait_until(lambda: len(read_ledger(ledger)) > 500, 60, "records to be handled")
            client = redis.Redis.from_url(store.url)
            marked_before = len(client.keys(f"streamq:dedup:{group}:*"))
            assert marked_before > 0, "the store was not in use before the freeze"
            os.kill(store.proc.pid, signal.SIGSTOP)
            status = Path(f"/proc/{store.proc.pid}/status")
            wait_until(lambda: "T (stopped)" in status.read_text(), 10, "the store to stop")
            frozen_at = len(read_ledger(ledger))
            wait_until(lambda: len(read_ledger(ledger)) > frozen_at + 500, 90,
                       "handling to go on with the store frozen")  # fmt: skip
            assert "dedup store" in worker.output() and "failed" in worker.output()
            os.kill(store.proc.pid, signal.SIGCONT)
            thawed_at = len(read_ledger(ledger))
            wait_until(lambda: len({e.id for e in read_ledger(ledger)}) == TOTAL, 120,
                       "every record")  # fmt: skip
        finally:
            worker.send_signal(signal.SIGTERM)
            code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    entries = read_ledger(ledger)
    check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert thawed_at < TOTAL, "everything was handled before the store came back"
    marks = len(client.keys(f"streamq:dedup:{group}:*"))
    assert marks > marked_before, "the store was not used again after it came back"
    print(f"\n{broker.kind}: {thawed_at - frozen_at} handled while the store was frozen; "
          f"marks {marked_before} before, {marks} after")  # fmt: skip
