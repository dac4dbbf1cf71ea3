"""D3, D4, D6, D7: handlers that fail, hang, or fail for everything, on Kafka and Redis.

Each case runs its own handler of tests/apps/faulty.py, which keeps the ledger format (``S``
at the start, ``E`` at the end) and adds an ``F`` line for every attempt that raised, so the
fault is read back from the ledger before any invariant is checked.

- D3: ``ordering="key"``; one record (N) raises on every attempt with a fixed 3 s backoff while
  the other keys of its partition run ahead; the worker is SIGKILLed right after one of N's
  failures, so inside its backoff. The commit must never pass N. The restart runs the fixed
  handler (no failure), so N is handled, not dead-lettered.
- D4: ``executor="processes"`` with ``timeout=``; one record sleeps forever in its pool
  process. The process is killed at the timeout (a GIL-free timer armed in the pool process),
  the record is retried once and lands in the DLQ as a TimeoutError, and the other partition
  is handled while the record hangs.
- D6: ``batch=True``; every call holding the poison raises. The documented policy retries the
  batch whole, then calls each member alone once: only the poison is dead-lettered.
- D7: every record raises (a bad deploy) with ``dlq_limit=3``: each partition dead-letters
  three records, then halts at the fourth instead of emptying the topic into the DLQ; the
  worker stays up and exits 4 (``EXIT_HALTED``) when stopped. A fixed deploy then handles the
  rest: handled + dead-lettered = produced, each exactly once.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamq.errors import EXIT_HALTED
from tests.conftest import Broker
from tests.integration.helpers import (
    AppSpec,
    Entry,
    app_env,
    app_spec,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_exclusive, check_run
from .observer import Sample, check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


def _app(case: str, extra: dict | None = None) -> AppSpec:
    """tests/apps/faulty.py with the handler of ``case`` (d3, d4, d6 or d7)."""
    return app_spec("faulty", case=case, extra=extra or {})


def _records(n: int) -> list[tuple[int, bytes]]:
    return [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(n)]


def _past(s: Sample, offset: int) -> bool:
    """Whether the sample shows ``offset`` as done (committed, or acknowledged on Redis)."""
    return s.committed > offset and (s.pending is None or offset not in s.pending)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(x for x in status.splitlines() if x.startswith("State:"))
    return "Z" not in state.split()[1]


def _by_key(entries: list[Entry]) -> list[Entry]:
    """With ``ordering="key"`` the unit of order is the key, not the partition: each key is
    given to ``check_run`` as a partition of its own (offsets still increase along a key)."""
    return [dataclasses.replace(e, partition=int(e.key[1:])) for e in entries]


def test_d3_key_lane_killed_in_a_backoff_never_commits_past_it(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(1)
    records = _records(400)
    coords = broker.produce(topic, records)
    n = 40  # key k0, its third record
    partition, n_off = coords[n]
    group, ledger = unique("d3"), tmp_path / "ledger"
    spec = _app("d3")
    env = app_env(broker.url, topic, group, ledger, TARGET=str(n), HANDLER_SLEEP="0.002")
    later_other_keys = {i for i, _ in records if i > n and i % 20 != n % 20}
    with observe(broker, topic, group, partitions=1) as observer:
        victim = start_worker(tmp_path, spec, {**env, "FAULT": "1"})
        wait_until(
            lambda: len({e.id for e in read_ledger(ledger)} & later_other_keys) >= 100,
            90, "other keys to run ahead of the failing record",
        )  # fmt: skip
        failures = len(read_ledger(ledger, "F"))
        wait_until(lambda: len(read_ledger(ledger, "F")) > failures, 30, "a fresh failure")
        victim.send_signal(signal.SIGKILL)  # its 3 s backoff has just begun
        killed_at = time.monotonic_ns()
        victim.finish(30)
        fails = [e for e in read_ledger(ledger, "F") if e.id == n]
        starts_n = [e for e in read_ledger(ledger, "S") if e.id == n]
        assert fails and len(starts_n) == len(fails), "N was not between attempts at the kill"
        assert all(e.id != n for e in read_ledger(ledger)), "N was handled before the kill"
        ahead = {e.id for e in read_ledger(ledger)} & later_other_keys
        assert len(ahead) >= 100, "no record of another key ran ahead of N"
        handled_by_victim = {e.id for e in read_ledger(ledger)}

        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
        assert code == 0, out[-3000:]
    first_run = [s for s in observer.samples if s.t_ns < killed_at and s.partition == partition]
    assert first_run, "no commit sample while N kept failing"
    assert not [s for s in first_run if _past(s, n_off)], "I2: committed past the failing N"
    entries = read_ledger(ledger)
    assert [e.id for e in entries].count(n) == 1, "N not handled exactly once after the restart"
    dupes = check_run(_by_key(entries), produced={i for i, _ in records},
                      starts=_by_key(read_ledger(ledger, "S")))  # fmt: skip
    check_exclusive(read_ledger(ledger, "S"), entries, set())  # I6 per real partition
    check_commits(observer.samples, entries)
    assert set(dupes) <= handled_by_victim, "a record the victim never finished was duplicated"
    assert ": dead-lettered " not in victim.output() + out, "N went to the DLQ"
    print(
        f"\n{broker.kind}: N failed {len(fails)}x, {len(ahead)} later records of other keys "
        f"handled before the kill, {len(first_run)} samples held at <= {n_off}, "
        f"{len(dupes)} re-handled after the restart"
    )


def test_d4_hung_pool_process_is_killed_and_the_other_partition_flows(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    records = _records(600)
    coords = broker.produce(topic, records)
    hung = sorted((off, i) for i, (p, off) in coords.items() if p == 0)[5][1]
    group, ledger = unique("d4"), tmp_path / "ledger"
    spec = _app("d4", extra={"processes": 2})
    env = app_env(broker.url, topic, group, ledger, TARGET=str(hung), HANDLER_SLEEP="0.01")
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, env)
        try:
            wait_until(lambda: ": dead-lettered " in worker.output(), 120, "the hung record's DLQ")
            hung_starts = [e for e in read_ledger(ledger, "S") if e.id == hung]
            assert len(hung_starts) == 2, "not one first attempt and one retry"  # max_retries=1
            worker_pid = worker.pid
            assert worker_pid not in {e.pid for e in hung_starts}, "it hung outside the pool"
            survivors = [e.pid for e in hung_starts if _alive(e.pid)]
            assert survivors == [], f"hung pool processes still alive: {survivors}"
            assert worker.proc.poll() is None, "the worker died with its pool process"
            wait_until(lambda: {e.id for e in read_ledger(ledger)} >= set(coords) - {hung},
                       120, "every other record")  # fmt: skip
        finally:
            worker.send_signal(signal.SIGTERM)
            code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    assert out.count("its pool process was killed; it was at") == 2, out[-3000:]

    entries = read_ledger(ledger)
    first_hang, second_hang = sorted(e.mono_ns for e in hung_starts)
    other = [e for e in entries if e.partition == 1 and first_hang < e.mono_ns < second_hang]
    assert other, "the other partition stood still while the record hung"
    hung_p, hung_off = coords[hung]
    stalled = [e for e in entries if e.partition == hung_p and e.offset > hung_off
               and e.mono_ns < second_hang]  # fmt: skip
    assert stalled == [], "records after the hung one ran before it was given up"
    check_run(entries, produced=set(coords), poison={hung}, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    assert broker.dlq_origins(topic) == [coords[hung]]
    (headers,) = broker._dlq_headers(f"{topic}.dlq")
    assert headers["streamq-error-type"] == b"builtins.TimeoutError", headers
    assert headers["streamq-attempts"] == b"2"
    print(
        f"\n{broker.kind}: hung in pids {[e.pid for e in hung_starts]}, both killed; "
        f"{len(other)} records of the other partition handled during the hang"
    )


def test_d6_batch_with_a_poison_dead_letters_only_the_poison(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    records = _records(600)
    coords = broker.produce(topic, records)
    poison = 217
    poison_p, poison_off = coords[poison]
    group, ledger = unique("d6"), tmp_path / "ledger"
    spec = _app("d6")
    env = app_env(broker.url, topic, group, ledger, TARGET=str(poison))
    with observe(broker, topic, group) as observer:
        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
    assert code == 0, out[-3000:]

    starts = read_ledger(ledger, "S")
    fails = read_ledger(ledger, "F")
    poison_calls = sorted(e.mono_ns for e in starts if e.id == poison)
    # max_retries=2: three calls of the whole batch, then the poison alone once
    assert len(poison_calls) == 4, f"the poison was called {len(poison_calls)} times"
    assert len([e for e in fails if e.id == poison]) == 4
    members = {e.id for e in starts if e.mono_ns == poison_calls[0]} - {poison}
    assert members, "the poison was alone in its batch: nothing to isolate"
    entries = read_ledger(ledger)
    handled = Counter(e.id for e in entries)
    assert all(handled[i] == 1 for i in members), "a batch member was not handled exactly once"
    alone = [e for e in starts if e.mono_ns == poison_calls[-1]]
    assert [e.id for e in alone] == [poison], "the last call of the poison was not alone"

    check_run(entries, produced=set(coords), poison={poison}, starts=starts)
    check_commits(observer.samples, entries)
    held = [s for s in observer.samples if s.partition == poison_p and s.t_ns < poison_calls[-1]]
    assert held, "no sample of the poison's partition before it was dead-lettered"
    assert not [s for s in held if _past(s, poison_off)], "I2: committed past the poison early"
    assert broker.dlq_origins(topic) == [(poison_p, poison_off)]  # I5: once, by origin
    (headers,) = broker._dlq_headers(f"{topic}.dlq")
    assert headers["streamq-error-type"] == b"builtins.ValueError", headers
    print(
        f"\n{broker.kind}: poison batch of {len(members) + 1}, {len(held)} samples held "
        f"before the DLQ write"
    )


def test_d7_everything_failing_halts_at_the_dlq_limit_and_skips_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    limit, partitions = 3, 2
    topic = broker.topic(partitions)
    records = _records(200)
    coords = broker.produce(topic, records)
    by_partition = {
        p: sorted((off, i) for i, (q, off) in coords.items() if q == p) for p in range(partitions)
    }
    dead_expected = {(p, off) for p in by_partition for off, _ in by_partition[p][:limit]}
    halt_at = {p: by_partition[p][limit][0] for p in by_partition}  # first not dead-lettered
    group, ledger = unique("d7"), tmp_path / "ledger"
    spec = _app("d7")
    env = app_env(broker.url, topic, group, ledger)
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, {**env, "FAULT": "1"})
        try:
            wait_until(lambda: worker.output().count("halting the partition") == partitions,
                       90, "both partitions to halt")  # fmt: skip
            time.sleep(2)  # several commit intervals and polls with the partitions halted
            assert worker.proc.poll() is None, "the worker died instead of halting"
            halted_until = time.monotonic_ns()
        finally:
            worker.send_signal(signal.SIGTERM)
            code, out = worker.finish(60)
        assert code == EXIT_HALTED, out[-3000:]
        assert "stopped with halted partitions" in out
        fails = read_ledger(ledger, "F")
        assert len(fails) == len(read_ledger(ledger, "S")), "a record did not fail"
        tried = {(e.partition, e.offset) for e in fails}
        assert tried == dead_expected | {(p, off) for p, off in halt_at.items()}, tried
        assert sorted(broker.dlq_origins(topic)) == sorted(dead_expected)

        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
        assert code == 0, out[-3000:]
    halted = [s for s in observer.samples if s.t_ns < halted_until]
    assert {s.partition for s in halted} == set(range(partitions)), "a partition unsampled"
    ahead = [s for s in halted if _past(s, halt_at[s.partition])]
    assert ahead == [], f"I2: committed past the halted record: {ahead[:3]}"

    entries = read_ledger(ledger)
    handled = Counter(e.id for e in entries)
    dead = Counter(broker.dlq_origins(topic))
    assert set(dead) == dead_expected and max(dead.values()) == 1, dead
    dead_ids = {i for i, c in coords.items() if c in dead}
    assert max(handled.values()) == 1, "a record was handled twice"
    assert sum(handled.values()) + sum(dead.values()) == len(records), "a record was skipped"
    check_run(entries, produced=set(coords), poison=dead_ids, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    print(
        f"\n{broker.kind}: {len(dead)} dead-lettered of {len(records)}, halted at {halt_at}; "
        f"{sum(handled.values())} handled after the fix"
    )
