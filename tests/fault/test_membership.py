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
    Worker,
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

CHUNK = 1000  # records produced at a time to keep a backlog in front of the members
LOW = 500  # a backlog under this is topped up while a member joins
LIMIT = 40_000  # more than this means no member ever drains anything: a hang, not a race


def test_members_join_one_by_one_then_leave_with_a_backlog(broker, tmp_path: Path) -> None:
    """The backlog is topped up by the test, so a slow join on a busy machine cannot drain it.

    A fixed backlog raced the joins: on a loaded CI machine the third member took its
    partitions after the first two had handled everything, and no member left with work due.
    """
    topic = broker.topic(6)
    group, ledger = unique("b1"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.003")
    produced: list[int] = []

    def produce(count: int) -> None:
        ids = range(len(produced), len(produced) + count)
        broker.produce(topic, [(i, orjson.dumps({"i": i, "k": f"k{i % 60}"})) for i in ids])
        produced.extend(ids)

    def handled() -> set[int]:
        return {e.id for e in read_ledger(ledger)}

    def joined(member: Worker) -> bool:
        entries = read_ledger(ledger)
        if len(produced) - len({e.id for e in entries}) < LOW:
            assert len(produced) < LIMIT, "records were produced and never handled"
            produce(CHUNK)
        return member.pid in {e.pid for e in entries}

    members: list[Worker] = []
    produce(4 * CHUNK)
    with observe(broker, topic, group, 6) as observer:
        try:
            for n in (1, 2, 3):
                members.append(start_worker(tmp_path, spec, env))
                wait_until(lambda m=members[-1]: joined(m), 90, f"member {n} to handle records")
            for leaving in members[:2]:
                produce(2 * CHUNK)
                left = len(produced) - len(handled())
                assert left > LOW, "the backlog was gone before the members left"
                leaving.send_signal(signal.SIGTERM)
                code, out = leaving.finish(90)
                assert code == 0, out[-3000:]
            wait_until(lambda: len(handled()) == len(produced), 240,
                       "the last member to handle the rest")  # fmt: skip
        finally:
            for member in members:
                if member.proc.poll() is None:
                    member.send_signal(signal.SIGTERM)
            codes = [m.finish(90)[0] for m in members]
    assert codes == [0, 0, 0], codes

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced=set(produced), starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert len({e.pid for e in entries}) == 3
    assert dupes == [], f"{len(dupes)} records handled twice across graceful handovers"
