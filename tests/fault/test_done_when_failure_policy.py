"""Issue 5's acceptance run, on both brokers: a mixed log through the whole failure policy.

20,000 records under ``max_retries=3``: some always fail, some fail twice and then succeed,
some are not JSON, some fail the schema. Every good record must be handled in per-key order,
the DLQ must hold exactly the poison records with their error type and message, and nothing
may stay pending or uncommitted. Then the same log under ``streamq run --workers 2`` with the
Redis dedup store, every process SIGKILLed part-way through, and a restart: nothing is lost
and duplicates stay within the work in flight at the kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamq.runtime.executors import INLINE_SLICE
from tests.integration.helpers import (
    app_env,
    app_spec,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(420)]

N = 20_000
PARTITIONS = 4
MAX_RETRIES = 3

# The app: tests/apps/mixed.py (records that always fail, fail twice, or are fine).
MIXED_APP = app_spec("mixed", max_retries=MAX_RETRIES)


def mixed_log() -> tuple[list[tuple[int, bytes]], dict[int, bytes]]:
    """The records, and the poison ids with the error type each must be dead-lettered with."""
    records, poison = [], {}
    for i in range(N):
        k = f"k{i % 20}"
        if i % 1000 == 7:
            value, poison[i] = orjson.dumps({"i": i, "k": k, "mode": "always"}), b"RuntimeError"
        elif i % 2000 == 11:
            value, poison[i] = b"\xff\xfe{not json", b"DecodeError"
        elif i % 2000 == 13:
            value, poison[i] = orjson.dumps({"i": "x", "k": k, "mode": "ok"}), b"SchemaError"
        elif i % 500 == 3:
            value = orjson.dumps({"i": i, "k": k, "mode": "twice"})
        else:
            value = orjson.dumps({"i": i, "k": k, "mode": "ok"})
        records.append((i, value))
    return records, poison


def check_dlq(broker, topic: str, coords: dict, poison: dict[int, bytes]) -> None:
    by_origin = {}
    for h in broker._dlq_headers(f"{topic}.dlq"):
        origin = (int(h["streamq-original-partition"]), int(h["streamq-original-offset"]))
        by_origin[origin] = h
    assert set(by_origin) == {coords[i] for i in poison}, "the DLQ is not exactly the poison"
    for i, error in poison.items():
        h = by_origin[coords[i]]
        assert h["streamq-error-type"].endswith(b"." + error), (i, h["streamq-error-type"])
        assert h["streamq-error-message"], i
        if error == b"RuntimeError":
            assert h["streamq-error-message"] == f"order {i} always fails".encode()
            assert h["streamq-attempts"] == str(MAX_RETRIES + 1).encode()


def test_mixed_log_single_worker(broker, tmp_path: Path) -> None:
    records, poison = mixed_log()
    topic = broker.topic(PARTITIONS)
    coords = broker.produce(topic, records)
    group, ledger = unique("done"), tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger)

    with observe(broker, topic, group, PARTITIONS) as observer:
        worker = start_worker(tmp_path, MIXED_APP, env, "--until-idle", "2")
        code, out = worker.finish(300)
    assert code == 0, out

    ends = broker.ends(coords)
    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, poison=set(poison),
                      starts=read_ledger(ledger, "S"))  # fmt: skip
    check_commits(observer.samples, entries)
    assert dupes == [], "a run without crashes handled records twice"
    starts = Counter(e.id for e in read_ledger(ledger, "S"))
    for i, value in records:
        mode = b"" if i in poison else orjson.loads(value)["mode"].encode()
        if i in poison and poison[i] == b"RuntimeError":
            assert starts[i] == MAX_RETRIES + 1, f"{i} attempted {starts[i]} times"
        elif mode == b"twice":
            assert starts[i] == 3, f"{i} attempted {starts[i]} times"
        elif i in poison:
            assert starts[i] == 0, f"poison {i} reached the handler"
    check_dlq(broker, topic, coords, poison)
    assert broker.uncommitted(topic, group, ends) == {}, "records left pending or uncommitted"
    print(f"\n{broker.kind}: {len(entries)} handled, {len(poison)} dead-lettered")


def _children(pid: int) -> list[int]:
    """The worker processes of a supervisor (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    out = []
    for child in path.read_text().split() if path.exists() else []:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def test_workers_2_sigkilled_then_restarted_with_redis_dedup(broker, tmp_path: Path) -> None:
    records, poison = mixed_log()
    topic = broker.topic(PARTITIONS)
    coords = broker.produce(topic, records)
    group, ledger = unique("done-w2"), tmp_path / "ledger"
    spec = MIXED_APP
    env = app_env(broker.url, topic, group, ledger, DEDUP=broker.dedup_url,
                  HANDLER_SLEEP="0.0003")  # fmt: skip

    observer = observe(broker, topic, group, PARTITIONS).start()
    victim = start_worker(tmp_path, spec, env, "--workers", "2")
    wait_until(lambda: len(_children(victim.pid)) == 2, 60, "two worker processes")
    members = _children(victim.pid)
    wait_until(lambda: len({e.pid for e in read_ledger(ledger)}) == 2, 120, "both to handle")
    wait_until(lambda: len(read_ledger(ledger)) >= N * 0.3, 180, "30% of the log handled")
    for pid in [*members, victim.pid]:  # workers first, so none drains on its parent's death
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    victim.finish(30)
    handled_before = {e.id for e in read_ledger(ledger)}
    assert len(handled_before) < N - len(poison), "the kill came after everything was handled"

    restart = start_worker(tmp_path, spec, env, "--workers", "2", "--until-idle", "3")
    code, out = restart.finish(300)
    observer.stop()
    assert code == 0, out

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, poison=set(poison),
                      starts=read_ledger(ledger, "S"))  # fmt: skip
    check_commits(observer.samples, entries)
    assert set(dupes) <= handled_before, "a record handled only after the restart ran twice"
    bound = 2 * PARTITIONS * INLINE_SLICE  # one unmarked slice per partition lane, per member
    assert len(dupes) <= bound, f"{len(dupes)} duplicates with the dedup store (bound {bound})"
    check_dlq(broker, topic, coords, poison)
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}
    print(
        f"\n{broker.kind} --workers 2: killed after {len(handled_before)} handled, "
        f"{len(dupes)} duplicates after the restart (bound {bound})"
    )
