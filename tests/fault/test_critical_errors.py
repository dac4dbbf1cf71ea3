"""A8: a handler that raises a process-critical error stops the worker without losing its record.

SystemExit, KeyboardInterrupt, CancelledError and MemoryError say nothing about the record:
they are never retried or dead-lettered. The worker stops with exit code 7 and one line, the
record stays uncommitted (Kafka) or pending (Redis), and the next run handles it. One run per
error kind, on the same group, each raising on the same record; a last run handles the rest.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streamq.errors import EXIT_CRITICAL, UnknownTopicOrPartition
from tests.integration.helpers import app_env, app_spec, read_ledger, start_worker, unique

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

VICTIM = 60
KINDS = ("SystemExit", "KeyboardInterrupt", "CancelledError", "MemoryError")
CRITICAL_APP = app_spec("critical", victim=VICTIM)  # tests/apps/critical.py


def test_process_critical_errors_stop_the_worker_and_lose_nothing(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(200)]
    coords = broker.produce(topic, records)
    group, ledger = unique("a8"), tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger)
    with observe(broker, topic, group) as observer:
        for kind in KINDS:
            worker = start_worker(tmp_path, CRITICAL_APP, {**env, "RAISE": kind})
            code, out = worker.finish(120)
            assert code == EXIT_CRITICAL, f"{kind}: exit {code}\n{out[-3000:]}"
            assert f"a handler raised {kind}" in out and "Traceback" not in out, out[-3000:]
            tries = [e for e in read_ledger(ledger, "S") if e.id == VICTIM]
            assert tries and tries[-1].pid == worker.pid, f"{kind}: the record was not reached"
            assert len([e for e in tries if e.pid == worker.pid]) == 1, f"{kind} was retried"
        code, out = start_worker(tmp_path, CRITICAL_APP, {**env, "RAISE": ""},
                                 "--until-idle", "2").finish(120)  # fmt: skip
        assert code == 0, out[-3000:]

    entries = read_ledger(ledger)
    check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    with pytest.raises(UnknownTopicOrPartition):  # nothing was ever dead-lettered
        broker.dlq_origins(topic)
    starts = [e for e in read_ledger(ledger, "S") if e.id == VICTIM]
    assert len(starts) == len(KINDS) + 1  # once per run: each critical run left it uncommitted
    assert coords[VICTIM] == (starts[0].partition, starts[0].offset)
