"""Invariant: SIGKILL mid-batch loses nothing and duplicates stay in the uncommitted window (A1).

The worker is killed after at least 30% of the records were handled (asserted first, so a
quiet run cannot pass), then restarted. Every record must be handled (I1) in per-key order
(I3) with consistent coordinates (I10). Duplicates may only be records the killed worker
handled. With the Redis dedup store they are bounded by the work in flight at the kill: one
inline slice (64 records) per partition lane. Where a crash counter runs (a Redis broker or
dedup store), the dead worker's full read-ahead is recovered in chunks at the usual speed:
no record of it is handled alone (issue 15).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import orjson
import pytest

from streamq import IMPLEMENTATION
from streamq.runtime.executors import INLINE_SLICE
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

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


@pytest.mark.parametrize("dedup", [False, True], ids=["no-dedup", "redis-dedup"])
def test_sigkill_mid_batch_then_restart(broker, dedup: bool, tmp_path: Path) -> None:
    topic = broker.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(1500)]
    broker.produce(topic, records)
    group, ledger = unique("a1"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, "max_poll_records": 100})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002",
                  DEDUP=broker.dedup_url if dedup else "")  # fmt: skip
    with observe(broker, topic, group) as observer:
        victim = start_worker(tmp_path, spec, env)
        wait_until(lambda: len(read_ledger(ledger)) >= 450, 90, "30% of the records handled")
        victim.send_signal(signal.SIGKILL)
        victim.finish(30)
        handled_by_victim = {e.id for e in read_ledger(ledger)}
        assert len(handled_by_victim) < 1500, "the kill came after everything was handled"

        code, err = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
        assert code == 0, err
        assert f"dispatch core {IMPLEMENTATION}" in err  # the twin pass really ran the twin
    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert set(dupes) <= handled_by_victim
    print(
        f"\n{broker.kind} dedup={dedup}: killed after {len(handled_by_victim)} handled, "
        f"{len(dupes)} duplicates after the restart"
    )
    if dedup or broker.kind == "redis":  # a crash counter ran
        assert "in chunks of up to" in err, err[-3000:]
        past = re.findall(r"records in chunks, (\d+) alone", err)
        assert past and all(n == "0" for n in past), err[-3000:]
    if dedup:
        assert len(dupes) <= INLINE_SLICE * 2, f"{len(dupes)} duplicates with the dedup store"
