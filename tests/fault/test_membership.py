"""B1 and B2 on both brokers: 1 -> 2 -> 3 -> 1 members while records flow.

Members join one at a time, each waiting until it handles records; then two of the three
are stopped with SIGTERM while a backlog is left. Graceful handovers drain, commit and only
then give partitions up, so nothing is handled twice (B2), no partition is ever handled by
two members at once (I6), and every record is handled in order within each ownership (I3).
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

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

pytestmark = [pytest.mark.fault, pytest.mark.timeout(400)]

TOTAL = 8000


def test_members_join_one_by_one_then_leave_with_a_backlog(broker, tmp_path: Path) -> None:
    topic = broker.topic(6)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 60}"})) for i in range(TOTAL)]
    broker.produce(topic, records)
    group, ledger = unique("b1"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.003")

    def pids() -> set[int]:
        return {e.pid for e in read_ledger(ledger)}

    members = []
    with observe(broker, topic, group, 6) as observer:
        try:
            for n in (1, 2, 3):
                members.append(start_worker(tmp_path, spec, env))
                wait_until(lambda m=members[-1]: m.pid in pids(), 90,
                           f"member {n} to handle records")  # fmt: skip
            for leaving in members[:2]:
                left = TOTAL - len({e.id for e in read_ledger(ledger)})
                assert left > 500, "the backlog was gone before the members left"
                leaving.send_signal(signal.SIGTERM)
                code, out = leaving.finish(90)
                assert code == 0, out[-3000:]
            wait_until(lambda: len({e.id for e in read_ledger(ledger)}) == TOTAL, 240,
                       "the last member to handle the rest")  # fmt: skip
        finally:
            for member in members:
                if member.proc.poll() is None:
                    member.send_signal(signal.SIGTERM)
            codes = [m.finish(90)[0] for m in members]
    assert codes == [0, 0, 0], codes

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert len({e.pid for e in entries}) == 3
    assert dupes == [], f"{len(dupes)} records handled twice across graceful handovers"
