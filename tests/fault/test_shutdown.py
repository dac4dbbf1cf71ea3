"""A5 and A6 on both brokers: a graceful stop commits what it handled; a hung one does not.

A5: SIGTERM mid-stream with handlers shorter than ``shutdown_timeout``: exit 0, and the next
run handles nothing twice (the stop's final commit, or XACKs, covered everything handled).
A6: SIGTERM while a handler hangs past ``shutdown_timeout``: the worker exits with 3 within
its deadline, the hung record is not committed, and the next run handles it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from streamq.errors import EXIT_SHUTDOWN_TIMEOUT
from tests.integration.helpers import (
    app_env,
    duplicates,
    ledger_app,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


def test_sigterm_mid_stream_then_the_next_run_rehandles_nothing(broker, tmp_path: Path) -> None:
    topic = broker.topic(4)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(2000)]
    broker.produce(topic, records)
    group, ledger = unique("a5"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.002")
    with observe(broker, topic, group, 4) as observer:
        worker = start_worker(tmp_path, spec, env)
        wait_until(lambda: len(read_ledger(ledger)) > 300, 60, "records to be handled")
        worker.send_signal(signal.SIGTERM)
        code, out = worker.finish(60)
        assert code == 0, out[-3000:]
        handled_first = len(read_ledger(ledger))
        assert handled_first < len(records), "the stop came too late to be mid-stream"
        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(120)
        assert code == 0, out[-3000:]
    entries = read_ledger(ledger)
    assert duplicates(entries) == [], "the graceful stop did not commit all it handled"
    check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)


def test_sigterm_while_a_handler_hangs_exits_3_and_the_record_comes_back(
    broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(400)]
    broker.produce(topic, records)
    hung = 150
    group, ledger = unique("a6"), tmp_path / "ledger"
    spec = ledger_app(extra={"lease_ttl": 3, "shutdown_timeout": 2})
    env = app_env(broker.url, topic, group, ledger, HANDLER_SLEEP="0.001")
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, {**env, "SLOW_ID": str(hung), "SLOW_FOR": "120"})
        wait_until(lambda: hung in {e.id for e in read_ledger(ledger, "S")}, 60,
                   "the handler to hang")  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        code, out = worker.finish(60)  # shutdown_timeout + 5 s: the watchdog's deadline
        assert code == EXIT_SHUTDOWN_TIMEOUT, f"exit {code}\n{out[-3000:]}"
        assert "shutdown did not finish" in out, out[-3000:]
        assert hung not in {e.id for e in read_ledger(ledger)}
        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(120)
        assert code == 0, out[-3000:]
    entries = read_ledger(ledger)
    check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)  # nothing was committed past the hung record
    finishers = {e.pid for e in entries if e.id == hung}
    assert finishers and worker.pid not in finishers, "the hung record was never handled again"
