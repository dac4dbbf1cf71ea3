"""Queue mode (issue 20): share groups on Redis and on Apache Kafka 4.2.

One partition, a handler doing 20 ms of I/O (tests/apps/queue.py), three workers with
``concurrency=32``. What is asserted are counts and sets from the handlers' ledger: every
record handled once (at least once through a kill, duplicates only among what the dead
member held), every member took part, many records in flight at once across members, a
poison record in the DLQ once. Throughput against a classic ``ordering="partition"`` group
on the same topic is measured and printed, never asserted (the machines are shared).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import streamq
from streamq.errors import UnknownTopicOrPartition
from tests.conftest import free_port
from tests.integration.helpers import (
    Scrape,
    app_env,
    app_spec,
    get,
    max_overlap,
    read_ledger,
    start_worker,
    streamq_cmd,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300)]

WORKERS = 3
CONCURRENCY = 32


def produce(broker, topic: str, n: int) -> set[int]:
    """``n`` records, on Kafka in producer batches of 8: the broker hands a share group's
    members whole batches (librdkafka cannot ask for KIP-1206's strict record limit), and
    one batch of everything would go to the first member to poll."""
    if broker.kind != "kafka":
        broker.produce(topic, [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(n)])
        return set(range(n))
    with streamq.Producer(broker.url) as producer:
        for i in range(n):
            producer.send(topic, {"i": i, "k": f"k{i % 20}"}, key=f"k{i % 20}")
            if i % 8 == 7:
                assert producer.flush(30) == 0
    return set(range(n))


def dead_lettered(broker, topic: str) -> list[tuple[int, int]]:
    """(partition, offset) of each record in the topic's DLQ; none if it was never made."""
    try:
        return broker.dlq_origins(topic)
    except UnknownTopicOrPartition:
        return []


def run_group(
    broker, tmp_path: Path, topic: str, n: int, name: str,
    until: Callable[[set[int]], bool] | None = None, workers: int = WORKERS, **env: str,
) -> tuple:  # fmt: skip
    """``workers`` workers of one group; ``n`` records produced once all joined (on a busy
    machine one worker can start seconds after another, and would find nothing left);
    stopped with SIGTERM once ``until`` says so of the ids handled (default: all).

    Returns the seconds from the first record started to the last finished (from the
    ledger), the ledger, and the workers' outputs.
    """
    group, ledger = unique(name), tmp_path / f"ledger.{name}"
    spec = app_spec("queue", extra={"visibility_timeout": 3})
    environ = app_env(broker.url, topic, group, ledger, **{"CONCURRENCY": str(CONCURRENCY),
                                                           **env})  # fmt: skip
    procs = [start_worker(tmp_path, spec, environ) for _ in range(workers)]
    try:
        wait_until(lambda: all(f"{group}: assigned" in w.output() for w in procs), 120,
                   "every worker to join")  # fmt: skip
        produce(broker, topic, n)
        done = until or (lambda ids: len(ids) >= n)
        wait_until(lambda: done({e.id for e in read_ledger(ledger)}), 240, f"{name} to drain")
    finally:
        for w in procs:
            w.send_signal(signal.SIGTERM)
    stamps = [e.mono_ns for e in read_ledger(ledger, "S") + read_ledger(ledger)]
    drained = (max(stamps) - min(stamps)) / 1e9
    outputs = []
    for w in procs:
        code, out = w.finish(120)
        assert code == 0, out[-3000:]
        outputs.append(out)
    return drained, ledger, outputs


@pytest.mark.any_protocol
def test_three_members_share_one_partition(broker, tmp_path: Path) -> None:
    topic = broker.topic(1)
    expected = set(range(1200))
    took, ledger, _ = run_group(broker, tmp_path, topic, len(expected), "share")
    done = read_ledger(ledger)
    counts = Counter(e.id for e in done)
    assert set(counts) == expected
    assert not [i for i, c in counts.items() if c > 1], "a record handled twice with no fault"
    members = Counter(e.pid for e in done)
    assert len(members) == WORKERS, f"not every member took part: {members}"
    peak = max_overlap(ledger)
    assert peak > CONCURRENCY, f"never more in flight than one member runs: {peak}"

    # the same records through a classic group, one at a time (one member: one partition);
    # a sample is enough
    sample = 60
    small = broker.topic(1)
    classic = {"GROUP_TYPE": "classic", "ORDERING": "partition", "CONCURRENCY": ""}
    took_classic, *_ = run_group(broker, tmp_path, small, sample, "classic", workers=1,
                                 **classic)  # fmt: skip
    ratio = (len(expected) / took) / (sample / took_classic)
    print(f"\n{broker.kind}: share group {len(expected)} records in {took:.1f}s "
          f"({len(expected) / took:.0f}/s, peak {peak} in flight, members {dict(members)}); "
          f"classic partition order {sample / took_classic:.0f}/s; ratio {ratio:.0f}x "
          f"(first record started to last finished)")  # fmt: skip


@pytest.mark.any_protocol
def test_a_poison_record_goes_to_the_dlq_while_the_rest_flows(broker, tmp_path: Path) -> None:
    topic = broker.topic(1)
    expected = set(range(400))

    def drained(ids: set[int]) -> bool:  # and the poison record's DLQ write made
        return len(ids) >= len(expected) - 1 and len(dead_lettered(broker, topic)) >= 1

    _, ledger, _ = run_group(broker, tmp_path, topic, len(expected), "poison", drained,
                             POISON_ID="17")  # fmt: skip
    assert {e.id for e in read_ledger(ledger)} == expected - {17}
    origins = dead_lettered(broker, topic)
    assert len(origins) == 1, origins
    starts = [e for e in read_ledger(ledger, "S") if e.id == 17]
    assert len(starts) == 3, f"record 17: {len(starts)} attempts, not 1 + max_retries=2"


@pytest.mark.any_protocol
def test_a_killed_members_records_are_delivered_again(broker, tmp_path: Path) -> None:
    """Record 300 SIGKILLs the first worker that runs it, with up to 31 others in flight:
    the others claim them after the visibility timeout; nothing is lost, and only records
    the dead member had started run twice."""
    topic = broker.topic(1)
    expected = produce(broker, topic, 900)
    mark = tmp_path / "killed"
    group, ledger = unique("kill"), tmp_path / "ledger"
    spec = app_spec("queue", extra={"visibility_timeout": 3})
    env = app_env(broker.url, topic, group, ledger, CONCURRENCY=str(CONCURRENCY),
                  KILL_ID="300", KILL_MARK=str(mark))  # fmt: skip
    workers = [start_worker(tmp_path, spec, env, "--until-idle", "3") for _ in range(WORKERS)]
    wait_until(mark.exists, 120, "record 300 to kill its worker")
    victim = int(mark.read_text())
    codes = {}
    for w in workers:
        code, out = w.finish(180)
        codes[w.pid] = code
        if w.pid != victim:
            assert code == 0, out[-3000:]
    assert codes[victim] == -signal.SIGKILL, codes
    starts, ends = read_ledger(ledger, "S"), read_ledger(ledger)
    took = {e.id for e in starts if e.pid == victim}
    held = took - {e.id for e in ends if e.pid == victim}  # started, never finished
    assert 300 in held and len(held) > 1, f"the victim held {sorted(held)}"
    counts = Counter(e.id for e in ends)
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))[:20]}"
    twice = {i for i, c in counts.items() if c > 1}
    assert twice <= took, f"handled twice though the dead member never started them: {twice}"
    assert dead_lettered(broker, topic) == [], "an innocent record was dead-lettered"
    redone = {e.id for e in starts if e.pid != victim} & held
    assert redone == held, f"not delivered again: {sorted(held - redone)}"
    print(f"\n{broker.kind}: the victim held {len(held)} unfinished records, all delivered "
          f"again; {len(twice)} handled twice (finished, not acknowledged)")  # fmt: skip


def cli(broker, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(streamq_cmd(*args, "--broker", broker.url), capture_output=True,
                          timeout=60)  # fmt: skip


def lag_of(broker, group: str, topic: str) -> list[dict]:
    done = cli(broker, "lag", "--group", group, "--topic", topic, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)


@pytest.mark.any_protocol
def test_operators_see_the_share_group(broker, tmp_path: Path) -> None:
    """``status``, ``lag``, metrics and ``offsets reset`` on a share group of two members.

    Kafka's share groups are read over the broker's own protocol (librdkafka has no admin
    API for them): their members, and each partition's start offset as the position.
    """
    topic = broker.topic(2)
    group, ledger = unique("ops"), tmp_path / "ledger"
    spec = app_spec("queue", extra={"visibility_timeout": 3})
    env = app_env(broker.url, topic, group, ledger, POISON_ID="5")
    ports = [free_port(), free_port()]
    procs = [start_worker(tmp_path, spec, env, "--metrics-port", str(p)) for p in ports]
    try:
        wait_until(lambda: all(f"{group}: assigned" in w.output() for w in procs), 120,
                   "both workers to join")  # fmt: skip

        def status() -> dict:
            done = cli(broker, "status", "--group", group, "--json")
            assert done.returncode == 0, done.stderr.decode()
            return orjson.loads(done.stdout)[0]

        # Kafka: the broker assigns the partitions to the members in its own time
        wait_until(lambda: len(status()["partitions"]) == 2, 60, "the partitions in status")
        report = status()
        assert report["group_type"] == "share", report
        assert len(report["members"]) == 2, report["members"]
        owners = {r["partition"]: r["owner"] for r in report["partitions"]}
        assert owners == {0: "shared by 2", 1: "shared by 2"}, report

        expected = produce(broker, topic, 200)

        def drained() -> bool:
            done = {e.id for e in read_ledger(ledger)}
            return done >= expected - {5} and len(dead_lettered(broker, topic)) == 1

        wait_until(drained, 120, "every record handled and the poison one dead-lettered")

        def counted(name: str) -> float:
            return sum(Scrape(p).total(f"streamq_share_records_{name}_total") for p in ports)

        wait_until(lambda: counted("accepted") >= 199 and counted("rejected") == 1, 30,
                   "the acknowledgements counted")  # fmt: skip
        for p in ports:  # a share member is live and ready by the classic rules
            for route in ("/healthz", "/readyz"):
                code, body = get(p, route)
                assert code == 200, (route, body)
    finally:
        for w in procs:
            w.send_signal(signal.SIGTERM)
    for w in procs:
        code, out = w.finish(120)
        assert code == 0, out[-3000:]

    rows = lag_of(broker, group, topic)
    assert {r["group_type"] for r in rows} == {"share"}
    assert all(r["committed"] is not None for r in rows), rows
    before = sum(r["lag"] for r in rows)
    if broker.kind == "redis":  # everything done: the poison record too (not pending)
        assert before == 0 and all(r["pending"] == 0 for r in rows), rows
    else:  # the start offset as Kafka saved it, which trails the last acknowledgements
        assert 0 <= before < 200 and any(r["committed"] > 0 for r in rows), rows
    produce(broker, topic, 50)
    assert sum(r["lag"] for r in lag_of(broker, group, topic)) == before + 50

    reset = cli(broker, "offsets", "reset", "--group", group, "--topic", topic, "--to-earliest")
    if broker.kind == "kafka":  # no share-group admin API in librdkafka: refused, said how
        assert reset.returncode == 2, reset.stderr.decode()
        assert "share group" in reset.stderr.decode()
        assert "kafka-share-groups.sh" in reset.stderr.decode()
        assert sum(r["lag"] for r in lag_of(broker, group, topic)) == before + 50
    else:  # Redis: the group's delivery cursor moves like a classic group's
        assert reset.returncode == 0, reset.stderr.decode()
        assert sum(r["lag"] for r in lag_of(broker, group, topic)) == 250


@pytest.mark.any_protocol
def test_a_record_that_cannot_be_dead_lettered_stops_the_member_until_fixed(
    broker, tmp_path: Path
) -> None:
    """``dlq=False`` and a poison record: the member cannot step past it (its next round
    waits for every record of this one), so it stops with exit 4 and hands the record back;
    a fixed deploy then handles it, and nothing else is lost or redone."""
    topic = broker.topic(1)
    group, ledger = unique("halt"), tmp_path / "ledger"
    spec = app_spec("queue", extra={"visibility_timeout": 3})
    env = app_env(broker.url, topic, group, ledger, POISON_ID="17", DLQ="0")
    expected = produce(broker, topic, 100)
    worker = start_worker(tmp_path, spec, env)
    code, out = worker.finish(120)
    assert code == 4, out[-3000:]
    assert "cannot step past it" in out, out[-3000:]
    handled = Counter(e.id for e in read_ledger(ledger))
    assert 17 not in handled and len(handled) < len(expected)
    assert dead_lettered(broker, topic) == []

    fixed = start_worker(tmp_path, spec, {**env, "POISON_ID": "-1"}, "--until-idle", "3")
    code, out = fixed.finish(120)
    assert code == 0, out[-3000:]
    counts = Counter(e.id for e in read_ledger(ledger))
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))}"
    assert [i for i, c in counts.items() if c > 1] == [], "a finished record handled again"


def test_a_member_of_the_other_group_type_is_refused(broker, tmp_path: Path) -> None:
    """A classic member joining a live share group, or a share member joining a live
    classic group, would take records the others expect to own (on Redis both read the same
    streams): it stops at once with one line saying so (Kafka refuses it at the broker)."""
    topic = broker.topic(1)
    spec = app_spec("queue", extra={"visibility_timeout": 3})
    for first, second, codes in (("share", "classic", {2}), ("classic", "share", {2, 5})):
        group = unique("mixed")
        env = app_env(broker.url, topic, group, tmp_path / f"ledger.{group}")
        member = start_worker(tmp_path, spec, {**env, "GROUP_TYPE": first})
        try:

            def joined(g: str = group) -> bool:  # at the broker: Kafka's joins on its poll
                done = cli(broker, "status", "--group", g, "--json")
                return done.returncode == 0 and orjson.loads(done.stdout)[0]["members"] != []

            wait_until(joined, 120, f"the {first} member to join")
            refused = start_worker(tmp_path, spec, {**env, "GROUP_TYPE": second})
            code, out = refused.finish(120)
            assert code in codes, out[-3000:]
            assert f"{first} group" in out or f"{first} consumer group" in out, out[-3000:]
        finally:
            member.send_signal(signal.SIGTERM)
        code, out = member.finish(120)
        assert code == 0, out[-3000:]
