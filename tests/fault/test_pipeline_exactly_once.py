"""Issue 18's proof: a chain of producing stages through worker crashes, on both brokers.

The app (tests/apps/pipeline.py) passes every order along ``orders -> invoices -> emails ->
sent``, one handler per stage, each keeping its ledger. Under ``guarantee="exactly_once"`` a
worker dies at each relevant failpoint (``in_transaction``, ``after_handle``,
``after_commit``, and ``in_revoke`` with a second member joining), or by seeded random
SIGKILLs of two workers; each case first proves the crash landed where it says (exit 137,
and handled inputs whose outputs a reader could not see yet, or could), then restarts
workers until the chain drained. A reader of every output topic (``read_committed`` on
Kafka, XRANGE on Redis) must then find every order exactly once, under its own key, with
the ids of one key in ascending order. Each stage's ledger passes ``check_run`` (I1, I3, I6,
I10) and the input stage's commits the observer's I2. Under ``at_least_once`` the same kills
lose nothing, and every duplicate in the final topic is an input some stage started twice
(the kills' in-flight inputs, or a rebalance's). The zombie producer is in
test_pipeline_zombie.py.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamq.brokers.view import read_topic
from streamq.settings import load_settings
from tests.integration.helpers import (
    AppSpec,
    Worker,
    app_env,
    app_spec,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import Sample, check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

STAGES = ("orders", "invoices", "emails")  # the handled topics; each passes on to the next
PARTITIONS = 2


@dataclass(frozen=True)
class Record:
    """One record of an output topic, as a reader found it."""

    partition: int
    offset: int
    key: str
    id: int


@dataclass
class Chain:
    """One test's topics, group and stage ledgers."""

    broker: Any  # tests.conftest.Broker
    topics: dict[str, str]  # orders, invoices, emails, sent -> topic name
    group: str
    ledgers: dict[str, Path]

    @classmethod
    def create(cls, broker: Any, tmp_path: Path, prefix: str) -> Chain:
        names = (*STAGES, "sent")
        topics = {name: broker.topic(PARTITIONS) for name in names}
        ledgers = {stage: tmp_path / f"ledger.{stage}" for stage in STAGES}
        return cls(broker, topics, unique(prefix), ledgers)

    def produce(self, n: int) -> set[int]:
        orders = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(n)]
        self.broker.produce(self.topics["orders"], orders)  # keyed k{i % 20}, like the value
        return {i for i, _ in orders}

    def env(self, guarantee: str, **more: str) -> dict[str, str]:
        t, ledgers = self.topics, self.ledgers
        return app_env(self.broker.url, t["orders"], self.group, ledgers["orders"],
                       INVOICES=t["invoices"], EMAILS=t["emails"], SENT=t["sent"],
                       LEDGER_INVOICES=str(ledgers["invoices"]),
                       LEDGER_EMAILS=str(ledgers["emails"]),
                       STREAMQ_GUARANTEE=guarantee, **more)  # fmt: skip

    def handled(self, stage: str, pid: int | None = None, kind: str = "E") -> set[int]:
        return {e.id for e in read_ledger(self.ledgers[stage], kind) if pid in (None, e.pid)}

    def read(self, name: str, *, settle: float | None = None, committed: bool = True):
        return read_records(self.broker, self.topics[name], settle=settle, committed=committed)

    def visible(self, name: str) -> set[int]:
        """Ids a reader sees in ``name`` now (Kafka: up to the open transactions)."""
        return {r.id for r in self.read(name, settle=1.0)}

    def unpublished(self, pid: int) -> dict[str, set[int]]:
        """Per stage, inputs ``pid`` handled whose outputs no reader can see (yet)."""
        nxt = dict(zip(STAGES, (*STAGES[1:], "sent"), strict=True))
        return {s: self.handled(s, pid) - self.visible(nxt[s]) for s in STAGES}


def read_records(
    broker: Any, topic: str, *, settle: float | None = None, committed: bool = True
) -> list[Record]:
    """Every record of ``topic``, partition by partition in offset order.

    Kafka: a fresh consumer, ``read_committed`` unless told otherwise, read to the high
    watermarks of the start (waiting out open transactions), or, given ``settle``, only as
    far as it gets before ``settle`` seconds pass without a record. Redis: XRANGE.
    """
    if broker.kind == "kafka":
        raw = _kafka_read(broker.url.removeprefix("kafka://"), topic, settle, committed)
    else:
        settings = load_settings(broker=broker.url, broker_timeout=20)
        raw = [(m.partition, m.offset, m.key, m.value) for m in read_topic(broker.url, topic,
                                                                          settings)]  # fmt: skip
    out = []
    for partition, offset, key, value in raw:
        body = orjson.loads(value)
        assert key == body["k"].encode(), f"{topic}: id {body['i']} lost its key ({key!r})"
        out.append(Record(partition, offset, body["k"], body["i"]))
    return sorted(out, key=lambda r: (r.partition, r.offset))


def _kafka_read(bootstrap: str, topic: str, settle: float | None, committed: bool) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                         "enable.auto.commit": False, "isolation.level": isolation,
                         "log_level": 0})  # fmt: skip
    try:
        parts = sorted(consumer.list_topics(topic, timeout=20).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}  # fmt: skip
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        todo = {p for p in parts if ends[p] > 0}
        out: list = []
        now = time.monotonic()
        last_record, deadline = now, now + 60  # an abandoned transaction aborts in <= 20 s
        while todo:
            batch = consumer.consume(500, 0.2)
            now = time.monotonic()
            for m in batch:
                if m.error() is None:
                    out.append((m.partition(), m.offset(), m.key(), m.value()))
                    last_record = now
            # the position, not the last record: it also steps over transaction markers
            reached = consumer.position([TopicPartition(topic, p) for p in todo])
            todo -= {tp.partition for tp in reached if tp.offset >= ends[tp.partition]}
            if settle is not None and now - last_record > settle:
                break
            assert now < deadline, f"reading {topic}: stuck below the high watermarks {ends}"
        return out
    finally:
        consumer.close()


def check_exactly_once(records: list[Record], expected: set[int], where: str) -> None:
    """Every expected id once, nothing else, each key on one partition, its ids ascending."""
    counts = Counter(r.id for r in records)
    missing = sorted(expected - set(counts))
    assert not missing, f"{where}: {len(missing)} ids lost, first {missing[:10]}"
    twice = sorted(i for i, c in counts.items() if c > 1)
    assert not twice, f"{where}: {len(twice)} ids published more than once, first {twice[:10]}"
    assert set(counts) == expected, f"{where}: ids nobody produced {set(counts) - expected}"
    check_key_order(records, where)


def check_key_order(records: list[Record], where: str) -> None:
    """Per key: one partition, and the first copies of its ids in ascending order."""
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in records:  # in offset order per partition
        partitions[r.key].add(r.partition)
        if r.id not in by_key[r.key]:
            by_key[r.key].append(r.id)
    for key, ids in by_key.items():
        assert len(partitions[key]) == 1, f"{where}: key {key} on partitions {partitions[key]}"
        assert ids == sorted(ids), f"{where}: key {key} out of order: {ids}"


def drain(chain: Chain, spec: AppSpec, env: dict[str, str], expected: set[int]) -> int:
    """Start workers one after the other until ``sent`` shows every order; returns how many.

    A worker idles out while the output of a dead member's open transaction stays
    invisible (Kafka aborts it within 20 s): the next one carries on.
    """
    deadline = time.monotonic() + 150
    runs = 0
    while not expected <= chain.visible("sent"):
        assert time.monotonic() < deadline, "the chain did not drain"
        code, out = start_worker(chain.ledgers["orders"].parent, spec, env,
                                 "--until-idle", "3").finish(150)  # fmt: skip
        assert code == 0, out[-3000:]
        runs += 1
    return runs


def check_chain(
    chain: Chain, expected: set[int], samples: list[Sample], overlap_ok: set[int] = frozenset()
) -> dict[str, list[int]]:
    """Exactly once on every output topic; the stage ledgers' invariants; I2 on the orders.

    Returns each stage's ids handled more than once (redone inputs: allowed, unpublished).
    """
    for name in (*STAGES[1:], "sent"):
        check_exactly_once(chain.read(name), expected, name)
    dupes = {}
    for stage in STAGES:
        entries, starts = read_ledger(chain.ledgers[stage]), read_ledger(chain.ledgers[stage], "S")
        dupes[stage] = check_run(entries, expected, starts=starts, overlap_ok=overlap_ok)
    check_commits(samples, read_ledger(chain.ledgers["orders"]))
    return dupes


def aborted(chain: Chain) -> int:
    """Kafka: records in the output topics that only a read_uncommitted reader sees."""
    if chain.broker.kind != "kafka":
        return 0
    names = (*STAGES[1:], "sent")
    return sum(len(chain.read(n, committed=False)) - len(chain.read(n)) for n in names)


# -- 1. exactly once, a crash at each failpoint ---------------------------------------------

CASES = [("in_transaction", 3), ("after_handle", 10), ("after_commit", 3)]


@pytest.mark.parametrize(("point", "nth"), CASES, ids=[c[0] for c in CASES])
def test_exactly_once_through_a_crash_at_each_failpoint(
    broker, point: str, nth: int, tmp_path: Path
) -> None:
    chain = Chain.create(broker, tmp_path, f"eos-{point}")
    expected = chain.produce(600)
    spec = app_spec("pipeline", extra={"max_poll_records": 50})
    env = chain.env("exactly_once", HANDLER_SLEEP="0.004")
    with observe(broker, chain.topics["orders"], chain.group, PARTITIONS) as observer:
        crashed = start_worker(tmp_path, spec, {**env, "STREAMQ_FAILPOINTS": f"{point}:exit@{nth}"},
                               "--until-idle", "1")  # fmt: skip
        code, err = crashed.finish(120)
        assert code == 137 and f"failpoint {point} fired" in err, f"no crash:\n{err[-3000:]}"
        unpublished = chain.unpublished(crashed.pid)
        handled = {s: chain.handled(s, crashed.pid) for s in STAGES}
        assert handled["orders"] and chain.visible("sent") < expected, "crashed after the work"
        # it committed outputs of its own inputs before (after_commit: just before) it died
        published = {s: handled[s] - unpublished[s] for s in STAGES}
        assert any(published.values()), "the crash came before the first commit"
        if point != "after_commit":  # inputs whose outputs were held, or sent and not committed
            assert any(unpublished.values()), "the crashed worker held no unpublished outputs"
        runs = drain(chain, spec, env, expected)
    dupes = check_chain(chain, expected, observer.samples)
    # Kafka: the crashed transaction's outputs in the log, aborted. Printed, not asserted: the
    # KIP-848 pass has found none there in some runs (not explained yet: issue 19's note); the
    # crash inside a publishing transaction is shown above (exit 137, the failpoint's line,
    # outputs published before it and outputs held at it)
    extra = aborted(chain)
    print(f"\n{broker.kind} {point}: the crashed worker handled "
          f"{ {s: len(h) for s, h in handled.items()} }, unpublished at the crash "
          f"{ {s: len(u) for s, u in unpublished.items()} }, redone "
          f"{ {s: len(d) for s, d in dupes.items()} }, aborted records {extra}, "
          f"{runs} restarts to drain")  # fmt: skip


def test_exactly_once_through_a_crash_inside_a_revoke(broker, tmp_path: Path) -> None:
    chain = Chain.create(broker, tmp_path, "eos-revoke")
    expected = chain.produce(600)
    spec = app_spec("pipeline", extra={"max_poll_records": 50})
    # the first member commits every 30 s: its revoke's commit is the one that matters
    first_spec = app_spec("pipeline", extra={"max_poll_records": 50, "commit_interval": 30})
    env = chain.env("exactly_once", HANDLER_SLEEP="0.004")
    with observe(broker, chain.topics["orders"], chain.group, PARTITIONS) as observer:
        # 20 ms an order: ~10 s of orders left when the joiner comes, which takes seconds to
        # start on a loaded machine; at 4 ms the first member could finish them all, commit
        # them when idle and have nothing unpublished at the revoke (seen once in CI)
        first = start_worker(
            tmp_path,
            first_spec,
            {**env, "HANDLER_SLEEP": "0.02", "STREAMQ_FAILPOINTS": "in_revoke:exit@1"},
        )
        wait_until(lambda: len(chain.handled("orders")) > 100, 60, "the first member to handle")
        joiner = start_worker(tmp_path, spec, env, "--until-idle", "3")  # makes the first revoke
        code, err = first.finish(120)
        assert code == 137 and "failpoint in_revoke fired" in err, f"no crash:\n{err[-3000:]}"
        unpublished = chain.unpublished(first.pid)
        assert unpublished["orders"], f"nothing unpublished at the crash:\n{err[-3000:]}"
        code, out = joiner.finish(150)
        assert code == 0, out[-3000:]
        runs = drain(chain, spec, env, expected)
    dupes = check_chain(chain, expected, observer.samples)
    assert dupes["orders"], "the revoked, uncommitted orders were not handled again"
    print(f"\n{broker.kind} in_revoke: {len(unpublished['orders'])} orders unpublished at the "
          f"crash, {len(dupes['orders'])} redone, {runs} more restarts to drain")  # fmt: skip


# -- 2 and 3. random SIGKILLs of two workers, under each guarantee ----------------------------

SEED = 18
KILLS = 4


@dataclass
class KillRun:
    chain: Chain
    expected: set[int]
    kills: list[tuple[int, int]]  # (pid, monotonic ns after it was dead)
    samples: dict[str, list[Sample]]  # per stage, the observer's


def run_with_kills(broker: Any, guarantee: str, tmp_path: Path) -> KillRun:
    """Two workers; a seeded random one SIGKILLed every 0.5-2 s, restarted at once."""
    rng = random.Random(f"{SEED}-{broker.kind}-{guarantee}")
    chain = Chain.create(broker, tmp_path, f"kills-{guarantee}")
    expected = chain.produce(1000)
    # A kill from outside looks to the crash counter like a record that kills its worker: two
    # random kills landing on one record handled alone would dead-letter it (seen in CI). The
    # counter still runs (ranges, chunks, records alone) but charges no record here.
    spec = app_spec("pipeline", extra={"max_poll_records": 50, "crash_limit": 1000})
    env = chain.env(guarantee, HANDLER_SLEEP="0.01")
    observers = {s: observe(broker, chain.topics[s], chain.group, PARTITIONS).start()
                 for s in STAGES}  # fmt: skip
    kills: list[tuple[int, int]] = []
    try:

        def worker() -> Worker:
            # no --until-idle: with two members on Kafka, each sees the other's partitions of
            # a transactional topic as lagging by their last commit marker, and never idles
            return start_worker(tmp_path, spec, env)

        workers = [worker(), worker()]
        wait_until(lambda: len(chain.handled("orders")) > 50, 60, "the workers to handle")
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.0))
            if chain.handled("emails") >= expected:
                break
            # kill one that works: a worker restarted a moment ago may own nothing yet (on
            # Redis until the dead one's claims lapse), and one that idles leaves nothing to redo
            i = working(chain, workers, rng)
            if i is None:
                break  # nothing left for either to do: the chain is about done
            victim = workers[i]
            victim.send_signal(signal.SIGKILL)
            assert victim.finish(30)[0] == -signal.SIGKILL
            kills.append((victim.pid, time.monotonic_ns()))
            workers[i] = worker()
        done = {s: len(chain.handled(s)) for s in STAGES}
        assert len(kills) >= 3, f"the run ended after {len(kills)} kills, inputs handled {done}"
        try:
            wait_until(lambda: expected <= chain.visible("sent"), 150, "the chain to drain")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{stuck_report(chain, expected, workers)}") from None
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            code, out = w.finish(60)
            assert code == 0, out[-3000:]
    finally:
        for o in observers.values():
            o.stop()
    return KillRun(chain, expected, kills, {s: o.samples for s, o in observers.items()})


def stuck_report(chain: Chain, expected: set[int], workers: list[Worker]) -> str:
    """What a chain that did not drain still lacks, stage by stage, and what the live
    workers logged last: enough to tell a stuck claim from a stuck fence."""
    nxt = dict(zip(STAGES, (*STAGES[1:], "sent"), strict=True))
    lines = []
    for stage in STAGES:
        handled, out = chain.handled(stage), chain.visible(nxt[stage])
        lines.append(f"{stage}: {len(expected - handled)} never handled (first "
                     f"{sorted(expected - handled)[:10]}), {len(expected - out)} not in "
                     f"{nxt[stage]} (first {sorted(expected - out)[:10]})")  # fmt: skip
    for w in workers:
        lines.append(f"-- worker {w.pid} (alive: {w.proc.poll() is None}), its last lines:")
        lines.append(w.output()[-4000:])
    return "\n".join(lines)


def working(chain: Chain, workers: list[Worker], rng: random.Random) -> int | None:
    """The index of a seeded random one of ``workers`` whose ledgers grow (``None`` if
    neither's grew within 20 s)."""

    def work_of(w: Worker) -> int:
        return sum(len(chain.handled(s, w.pid)) for s in STAGES)

    before = [work_of(w) for w in workers]
    until = time.monotonic() + 20
    while time.monotonic() < until:
        time.sleep(0.1)
        grew = [i for i, w in enumerate(workers)
                if w.proc.poll() is None and work_of(w) > before[i]]  # fmt: skip
        if grew:
            return rng.choice(grew)
    return None


def test_exactly_once_through_random_sigkills(broker, tmp_path: Path) -> None:
    run = run_with_kills(broker, "exactly_once", tmp_path)
    killed = {pid for pid, _ in run.kills}
    started = {s: run.chain.handled(s, kind="S") for s in STAGES}
    assert any(run.chain.handled(s, pid) for s in STAGES for pid in killed), "killed idle"
    dupes = check_chain(run.chain, run.expected, run.samples["orders"])
    assert any(dupes.values()), "no kill cost handled work: nothing was redone"
    for stage in STAGES[1:]:
        check_commits(run.samples[stage], read_ledger(run.chain.ledgers[stage]))
    assert all(started[s] >= run.expected for s in STAGES)
    redone = {s: len(d) for s, d in dupes.items()}
    print(f"\n{broker.kind}: {len(run.kills)} kills, redone {redone}, aborted records "
          f"{aborted(run.chain)}")  # fmt: skip


def test_at_least_once_through_random_sigkills(broker, tmp_path: Path) -> None:
    run = run_with_kills(broker, "at_least_once", tmp_path)
    chain = run.chain
    sent = chain.read("sent")
    counts = Counter(r.id for r in sent)
    lost = sorted(run.expected - set(counts))
    assert not lost, f"I1: {len(lost)} orders never reached the final topic, first {lost[:10]}"
    assert set(counts) == run.expected
    check_key_order(sent, "sent")
    for stage in STAGES:
        entries = read_ledger(chain.ledgers[stage])
        check_run(entries, run.expected, starts=read_ledger(chain.ledgers[stage], "S"))
        check_commits(run.samples[stage], entries)
    # in flight at a kill: started by the killed worker, not committed by it when it died
    in_flight: set[int] = set()
    for pid, dead_at in run.kills:
        for stage in STAGES:
            for e in read_ledger(chain.ledgers[stage], "S"):
                if e.pid == pid and uncommitted(run.samples[stage], dead_at, e.partition,
                                                e.offset):  # fmt: skip
                    in_flight.add(e.id)
    assert in_flight, "no kill landed on work in flight"
    dupes = sorted(i for i, c in counts.items() if c > 1)
    # Every duplicate comes from an input some stage started again (a kill, or a rebalance
    # whose commit was refused: the KIP-848 pass has seen the second worker's join redo a
    # few early orders); one no stage started twice would be an outbox that published twice.
    started = Counter((s, e.id) for s in STAGES for e in read_ledger(chain.ledgers[s], "S"))
    unexplained = [i for i in dupes if all(started[(s, i)] < 2 for s in STAGES)]
    assert not unexplained, f"duplicates that no stage started twice: {unexplained[:10]}"
    beyond = sorted(set(dupes) - in_flight)
    print(f"\n{broker.kind}: {len(run.kills)} kills, {len(in_flight)} orders in flight at "
          f"them, {len(dupes)} duplicated in the final topic "
          f"({len(sent) - len(run.expected)} extra records), {len(beyond)} of them redone "
          "after a rebalance rather than a kill")  # fmt: skip


def uncommitted(samples: list[Sample], after_ns: int, partition: int, offset: int) -> bool:
    """Whether ``offset`` was not done in the group's first sample of ``partition`` taken
    after ``after_ns`` (no such sample: nothing was ever committed there)."""
    for s in samples:
        if s.t_ns > after_ns and s.partition == partition:
            return offset >= s.committed or offset in (s.pending or ())
    return True
