"""Invariant: a worker that dies at any step between poll and commit loses nothing (C1, A2).

Each case crashes the worker (os._exit(137)) at one failpoint, first proving that the crash
happened, then restarts it and checks the ledger: every good record handled (I1), in per-key
order (I3), coordinates consistent (I10), and the poison only in the DLQ, each origin present
(I5; a crash right after a DLQ ack may write one origin twice). With the Redis dedup store, a
crash right after marking re-handles nothing.

``in_revoke`` has its own case: it fires between a revoke's drain and its commit, so it needs a
second member to join mid-run; in a lone worker's final revoke everything is committed already
and the crash could not lose anything.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamq import IMPLEMENTATION
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

CASES = [
    ("after_poll", 3),
    ("after_handle", 5),
    ("after_mark", 5),
    ("after_dlq", 2),
    ("after_commit", 2),
]


@pytest.mark.parametrize(("point", "nth"), CASES, ids=[c[0] for c in CASES])
def test_a_crash_at_each_failpoint_loses_nothing(
    broker, point: str, nth: int, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    good = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(400)]
    poison = [(1000 + j, b"not json") for j in range(3)]
    coords = broker.produce(topic, good[:200] + poison + good[200:])
    group, ledger = unique("fp"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, "max_poll_records": 50})
    # 4 ms a record: the crash must land while work is left, also on a machine so busy that
    # the poll thread's commits fall behind the handlers (at 1 ms, all 400 were handled
    # before the second commit once, with CI's two test passes side by side)
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.004", DEDUP=broker.dedup_url)

    with observe(broker, topic, group) as observer:
        crashed = start_worker(tmp_path, spec,
                               {**env, "STREAMQ_FAILPOINTS": f"{point}:exit@{nth}"},
                               "--until-idle", "1")  # fmt: skip
        code, err = crashed.finish(120)
        assert code == 137 and f"failpoint {point} fired" in err, (
            f"the crash did not happen:\n{err}"
        )
        before = {e.id for e in read_ledger(ledger)}
        assert len(before) < len(good), "the crash came after all the work was done"

        code, err = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
        assert code == 0, err
        assert f"dispatch core {IMPLEMENTATION}" in err  # the twin pass really ran the twin

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in good}, poison={i for i, _ in poison},
                      starts=read_ledger(ledger, "S"))  # fmt: skip
    check_commits(observer.samples, entries)
    assert set(broker.dlq_origins(topic)) == {coords[i] for i, _ in poison}
    if point == "after_mark":
        assert dupes == [], "records marked in the dedup store before the crash ran again"
    assert set(dupes) <= before, "a record handled only after the restart ran twice"


def test_a_crash_inside_a_revoke_before_its_commit_loses_nothing(broker, tmp_path: Path) -> None:
    topic = broker.topic(4)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(2000)]
    broker.produce(topic, records)
    group, ledger = unique("fp-revoke"), tmp_path / "ledger"
    # steady-state commits every 30 s: the revoke's commit is the one that matters
    spec = ledger_app(extra={"lease_ttl": 3, "max_poll_records": 50, "commit_interval": 30})
    # The first member handles at 20 ms a record, ~8 s of work left when the joiner (a fresh
    # process on a loaded machine) starts: at 5 ms it once finished all 2,000 before the
    # joiner had joined in CI. The joiner redoes the rest at 5 ms.
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.005")
    slow = {**env, "HANDLER_SLEEP": "0.02", "STREAMQ_FAILPOINTS": "in_revoke:exit@1"}
    with observe(broker, topic, group, 4) as observer:
        first = start_worker(tmp_path, spec, slow)
        wait_until(lambda: len(read_ledger(ledger)) > 300, 90, "the first member to handle")
        joiner = start_worker(tmp_path, spec, env)  # its join makes the first one revoke
        code, err = first.finish(120)
        assert code == 137 and "failpoint in_revoke fired" in err, f"no crash:\n{err[-3000:]}"
        by_first = {e.id for e in read_ledger(ledger) if e.pid == first.pid}
        # commits every 30 s: what the first member handled was not committed when it died
        assert by_first and len(by_first) < len(records), (
            f"the crash came after all the work:\n{err[-3000:]}"
        )
        wait_until(lambda: {e.id for e in read_ledger(ledger)} >= {i for i, _ in records}, 180,
                   "the joiner to handle everything")  # fmt: skip
        joiner.send_signal(15)
        code, out = joiner.finish(60)
        assert code == 0, out[-3000:]

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert dupes and set(dupes) <= by_first, "the revoked, uncommitted work was not redone"
    print(f"\n{broker.kind}: {len(by_first)} handled before the crash, {len(dupes)} redone")
