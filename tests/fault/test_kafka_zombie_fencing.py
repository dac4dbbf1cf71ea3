"""Invariant: a member frozen past its session is fenced when it wakes (RELIABILITY B4).

Apache Kafka only. A member is SIGSTOPped while it has records in flight (asserted: started,
not finished) and stays frozen past ``session.timeout.ms``; a new member takes its
partitions and commits past them (asserted). On SIGCONT the zombie must learn it lost the
partitions (``on_lost``, logged), its late commits must not move the group's offsets back
or forward, and it must start no new handler after waking (until the group gives it
partitions again). The ledger shows nothing lost, and every duplicate is one of the records
the zombie had in flight when it froze: running, or handled but not yet committed.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
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
from tests.integration.helpers import (
    kafka_committed as committed,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.timeout(240)]


def test_a_member_frozen_past_its_session_is_fenced_when_it_wakes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from tests.conftest import Broker

    kafka = Broker("kafka", f"kafka://{kafka_bootstrap}", "")
    topic = kafka.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(3000)]
    kafka.produce(topic, records)
    group, ledger = unique("zombie"), tmp_path / "ledger"
    spec = ledger_app()  # session.timeout.ms=6000
    # 10 ms a record: the member freezes mid-handler, and the backlog outlasts the session
    env = app_env(kafka.url, topic, group, ledger, HANDLER_SLEEP="0.01")
    observer = observe(kafka, topic, group).start()
    zombie = start_worker(tmp_path, spec, env)
    wait_until(lambda: len(read_ledger(ledger)) > 100, 60, "the first member to handle")
    zombie.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic_ns()
    time.sleep(0.2)  # a ledger line in the middle of os.write shows up in full
    started = {e.id for e in read_ledger(ledger, "S") if e.pid == zombie.pid}
    finished = {e.id for e in read_ledger(ledger) if e.pid == zombie.pid}
    in_flight = started - finished
    assert in_flight, "the member froze with nothing in flight"
    before = committed(kafka_bootstrap, group, topic, 2)

    heir = start_worker(tmp_path, spec, env)
    wait_until(lambda: f"group {group}: assigned" in heir.output(), 60, "the heir's assignment")
    wait_until(
        lambda: all(c > before[p] for p, c in committed(kafka_bootstrap, group, topic, 2).items()),
        60,
        "the heir to commit past the zombie on every partition",
    )
    assert time.monotonic_ns() - frozen_at > 6e9, "the freeze did not outlast the session"

    zombie.send_signal(signal.SIGCONT)
    thawed_at, thawed_wall = time.monotonic_ns(), datetime.now().strftime("%H:%M:%S,%f")[:-3]
    wait_until(lambda: "lost" in zombie.output(), 30, "the zombie to learn it lost its partitions")
    zombie.send_signal(signal.SIGTERM)
    code, out = zombie.finish(60)
    assert "Traceback" not in out, out
    assert "stood still" in out, out  # the liveness watchdog saw the freeze

    wait_until(lambda: len({e.id for e in read_ledger(ledger)}) == 3000, 120, "the backlog")
    heir.send_signal(signal.SIGTERM)
    code, err = heir.finish(60)
    observer.stop()
    assert code == 0, err

    assert code == 0, out
    late_starts = [
        e for e in read_ledger(ledger, "S") if e.pid == zombie.pid and e.mono_ns > thawed_at
    ]
    rejoined = out.count(f"group {group}: assigned") > 1  # then it may handle again, rightly
    if not rejoined:
        first = (min(e.mono_ns for e in late_starts) - thawed_at) / 1e9 if late_starts else 0
        assert late_starts == [], (
            f"the zombie started {len(late_starts)} handlers after waking (thawed at "
            f"{thawed_wall}, the first {first:.2f}s later); its log:\n{out[-4000:]}"
        )
    entries = read_ledger(ledger)
    # the zombie's running handler spans the freeze, while the heir owns its partition
    dupes = check_run(entries, produced={i for i, _ in records},
                      starts=read_ledger(ledger, "S"), overlap_ok={zombie.pid})  # fmt: skip
    check_commits(observer.samples, entries)
    uncommitted = in_flight | {
        e.id for e in entries if e.pid == zombie.pid and e.offset >= before[e.partition]
    }
    assert set(dupes) <= uncommitted, f"duplicates beyond the zombie's uncommitted work: {dupes}"
    print(
        f"\nzombie had {len(in_flight)} running and {len(uncommitted)} uncommitted at the "
        f"freeze; {len(dupes)} handled twice; thawed at {thawed_wall}:"
    )
    print("\n".join(line for line in out.splitlines() if "stood still" in line or "lost" in line))
