"""A record that kills the worker process is dead-lettered as WorkerLost, not looped on (C4).

The handler SIGKILLs its own process on one record: nothing the retry policy can catch.
Each restart must make progress: the first death gives the range the worker had in flight;
a small range goes one record at a time at once, a full read-ahead goes in chunks and the
second death gives the chunk; the next ``crash_limit`` are charged to the killer itself, and
the run after that dead-letters it with its provenance and handles everything else once, in
per-key order.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamq.brokers.redis.entries import offset_to_id
from tests.integration.helpers import app_env, ledger_app, read_ledger, start_worker, unique

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

SIGKILLED = -9


@pytest.mark.parametrize(
    ("read_ahead", "extra", "sleep", "plan", "deaths"),
    [
        # at most 16 + 8 records in flight per partition: within SOLO_MAX
        ("small", {"max_poll_records": 8, "max_in_flight": 16}, "0", "those one at a time", 3),
        # everything polled long before the killer is reached: chunks first
        ("full", {"max_poll_records": 50}, "0.003", "those in chunks of up to", 4),
    ],
    ids=["small-read-ahead", "full-read-ahead"],
)
def test_a_record_that_kills_the_worker_goes_to_the_dlq(
    broker, tmp_path: Path, read_ahead: str, extra: dict, sleep: str, plan: str, deaths: int
) -> None:
    topic = broker.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(400)]
    coords = broker.produce(topic, records)
    killer = 137
    group, ledger = unique("crash"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, **extra})
    env = app_env(broker.url, topic, group, ledger, KILL_ID=str(killer), HANDLER_SLEEP=sleep,
                  STREAMQ_CRASH_STORE=broker.dedup_url, STREAMQ_CRASH_LIMIT="2")  # fmt: skip

    codes, outputs = [], []
    with observe(broker, topic, group) as observer:
        for _ in range(7):  # bounded: a crash loop fails the test instead of hanging it
            code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(120)
            codes.append(code)
            outputs.append(out)
            if code != SIGKILLED:
                break
    # the fault this case is about: the first restart found the range it meant to
    assert plan in outputs[1], outputs[1][-3000:]
    paused = [line for o in outputs for line in o.splitlines() if "crash counter at" in line]
    assert codes == [SIGKILLED] * deaths + [0], (
        f"exit codes {codes}; crash counting paused: {paused}; last run:\n{out}"
    )
    # log lines name offsets as the broker's users know them: an entry ID on Redis
    shown = offset_to_id(coords[killer][1]) if broker.kind == "redis" else coords[killer][1]
    assert "WorkerLost" in out and f"@{shown}" in out

    starts = [e for e in read_ledger(ledger, "S") if e.id == killer]
    assert len(starts) == deaths, "the killer ran more often than it took to isolate it"
    entries = read_ledger(ledger)
    check_run(entries, produced={i for i, _ in records}, poison={killer},
              starts=read_ledger(ledger, "S"))  # fmt: skip
    check_commits(observer.samples, entries)

    headers = broker._dlq_headers(f"{topic}.dlq")
    assert len(headers) == 1
    assert (int(headers[0]["streamq-original-partition"]),
            int(headers[0]["streamq-original-offset"])) == coords[killer]  # fmt: skip
    assert headers[0]["streamq-error-type"] == b"streamq.errors.WorkerLost"
    assert b"died 2 times while handling this record alone" in headers[0]["streamq-error-message"]
