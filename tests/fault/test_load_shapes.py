"""F1, F3 and F5 on both brokers: a backlog under back-pressure, 64 partitions, a hot key.

Each case starts one real worker with a metrics port and waits until it owns every
partition; F1 and F3 then have it handle one warm-up record per partition, so what it keeps
per partition exists before its RSS is taken as the baseline. Then the test produces as fast
as the client can and lets the worker drain, while a thread reads the worker's VmRSS and
thread count from ``/proc`` every 250 ms. Memory is held to a bound that only a leak of the
whole backlog would break (growth above the baseline below the backlog's payload bytes); the
machine is shared, so the figures are printed, and no figure of speed is asserted.

Scaled down from the matrix so each case stays under ~40 s here (the chaos tier has the
full sizes):

- F1: 8,000 records of 2 KB (about 16 MB; the matrix says 200k) into 4 partitions, a 2 ms
  handler, caps of 64 records / 64 KB per partition and 512 KB per worker, so back-pressure
  pauses partitions again and again. The pause counter must move, every record fetched must
  be handled exactly once (what was fetched before a pause is not dropped, faust #88), the
  lag must drain and no partition may stay paused.
- F3: 64 partitions x 200 records of 2 KB (25 MB) on one worker, caps of 16 records / 16 KB
  per partition (1 MB per worker), a 0.5 ms handler. Every record is handled, in partition
  order; a worker with a thread per partition would show 64 threads or more.
- F5: 3,600 records of one hot key produced first, then 400 records of 40 cold keys, into
  2 partitions; a sync ``ordering="key"`` handler sleeping 2 ms (inline, so the lanes share
  the event loop and take turns). The cold keys that share the hot key's partition sit
  behind its whole burst in the log: with partition order none of them could finish before
  the hot key's last record starts (checked by hand: the test then fails), with key lanes
  they must. Median latencies (handler start minus send time) are printed, not asserted.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import streamq
from tests.conftest import Broker, free_port
from tests.integration.helpers import (
    AppSpec,
    Entry,
    Scrape,
    Worker,
    app_env,
    app_spec,
    check_per_key_order,
    duplicates,
    ledger_app,
    read_ledger,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import Sample, check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

PAD = "x" * 2000  # with the id and key, a record of about 2 KB

Item = tuple[int, str, int | None, bytes]  # id, key, partition (None: by key), value


def _record(i: int, key: str, partition: int | None = None, pad: str = PAD) -> Item:
    return i, key, partition, orjson.dumps({"i": i, "k": key, "pad": pad})


@dataclass
class Drain:
    """What one worker did with one backlog."""

    entries: list[Entry]
    starts: list[Entry]
    baseline_kb: int  # VmRSS after the warm-up, before the backlog was produced
    rss_kb: list[int]  # VmRSS samples from the first record produced to the drain's end
    threads: list[int]
    metrics: Scrape  # scraped once everything was handled and the lag was 0
    samples: list[Sample]  # committed positions, for I2


class Vitals:
    """VmRSS (kB) and thread count of one process, every 250 ms (RELIABILITY.md section 3)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[int, int, int]] = []  # (mono ns, rss kB, threads)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vitals", daemon=True)

    def __enter__(self) -> Vitals:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._done.is_set():
            self.read()
            self._done.wait(0.25)

    def read(self) -> tuple[int, int, int] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None  # exited
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:  # a zombie has no memory left to show
            return None
        sample = (time.monotonic_ns(), int(fields["VmRSS"].split()[0]), int(fields["Threads"]))
        self.samples.append(sample)
        return sample


def _scrape(port: int) -> Scrape | None:
    try:
        return Scrape(port)
    except OSError:
        return None


def _drained(port: int, ledger: Path, partitions: int, total: int) -> bool:
    """Everything handled, every partition's lag sampled at 0, nothing in flight or paused.

    The ledger is read first, so /metrics is not scraped many times a second all along.
    """
    if len({e.id for e in read_ledger(ledger)}) < total:
        return False
    s = _scrape(port)
    if s is None:
        return False
    lag = s.by("streamq_consumer_lag_records", "partition")
    return (
        s.total("streamq_records_handled_total") >= total
        and len(lag) == partitions
        and not any(lag.values())
        and s.total("streamq_in_flight_records") == 0
        and s.total("streamq_partition_paused") == 0
    )


def _drain(
    broker: Broker,
    tmp_path: Path,
    spec: AppSpec,
    topic: str,
    partitions: int,
    warmup: list[Item],
    backlog: Callable[[], Any],
    total: int,
    **env: str,
) -> tuple[Drain, Any]:
    """Start a worker, wait until it owns ``partitions`` and has handled ``warmup``, take its
    RSS as the baseline, call ``backlog()`` and wait until all ``total`` records are handled.

    The warm-up (a record per partition) makes the worker build what it keeps per partition
    (lanes, offset trackers, metric series; and one scrape of those series, which costs the
    worker some 10 MB at 64 partitions) before the baseline: the growth measured after it is
    what the backlog adds. Returns what the worker did and what ``backlog()`` returned.
    """
    group, ledger, port = unique("load"), tmp_path / "ledger", free_port()
    with observe(broker, topic, group, partitions) as observer:
        worker = Worker(tmp_path, spec, app_env(broker.url, topic, group, ledger, **env),
                        "--metrics-port", str(port))  # fmt: skip
        with Vitals(worker.pid) as vitals:
            try:

                def owns_all() -> bool:
                    s = _scrape(port)
                    return s is not None and s.total("streamq_assigned_partitions") == partitions

                wait_until(owns_all, 120, f"the worker to own all {partitions} partitions")
                owned = vitals.read()
                if warmup:
                    _send(broker.url, topic, warmup)
                    wait_until(lambda: _drained(port, ledger, partitions, len(warmup)), 60,
                               "the warm-up records")  # fmt: skip
                baseline = vitals.read()
                assert baseline is not None, worker.output()[-3000:]
                produced = backlog()
                wait_until(lambda: _drained(port, ledger, partitions, total), 180,
                           f"{total} records handled and the lag drained")  # fmt: skip
                drained = time.monotonic_ns()
                metrics = Scrape(port)
            finally:
                worker.send_signal(signal.SIGTERM)
                code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    during = [(rss, n) for t, rss, n in vitals.samples if baseline[0] <= t <= drained]
    took = (drained - baseline[0]) / 1e9
    print(f"\nRSS {owned[1] / 1024 if owned else 0:.1f} MB owning {partitions} partitions, "
          f"{baseline[1] / 1024:.1f} MB after {len(warmup)} warm-up records; "
          f"{total - len(warmup)} records drained in {took:.1f} s")  # fmt: skip
    drain = Drain(
        entries=read_ledger(ledger),
        starts=read_ledger(ledger, "S"),
        baseline_kb=baseline[1],
        rss_kb=[rss for rss, _ in during],
        threads=[threads for _, threads in during],
        metrics=metrics,
        samples=observer.samples,
    )
    return drain, produced


def _send(url: str, topic: str, items: list[Item]) -> tuple[
    dict[int, tuple[int, int]], dict[int, int]
]:  # fmt: skip
    """Send (id, key, partition or None, value) as fast as the client takes them.

    Returns id -> (partition, offset) and id -> the monotonic time it was sent (ns).
    """
    sent: dict[int, int] = {}
    futures = {}
    with streamq.Producer(url) as producer:
        for i, key, partition, value in items:
            sent[i] = time.monotonic_ns()
            futures[i] = producer.send(topic, value, key=key, partition=partition)
        assert producer.flush(60) == 0
    return {i: (f.result().partition, f.result().offset) for i, f in futures.items()}, sent


def _check_memory(drain: Drain, backlog: int, what: str) -> None:
    """I7, generously: growth above the idle worker stays below the backlog's bytes."""
    assert drain.rss_kb, "no RSS sample while the backlog drained"
    low, high = min(drain.rss_kb), max(drain.rss_kb)
    print(
        f"\n{what}: backlog {backlog / 2**20:.1f} MB; worker RSS idle "
        f"{drain.baseline_kb / 1024:.1f} MB, while draining {low / 1024:.1f}..{high / 1024:.1f} "
        f"MB ({len(drain.rss_kb)} samples); threads {min(drain.threads)}..{max(drain.threads)}"
    )
    grew = (high - drain.baseline_kb) * 1024
    assert grew < backlog, (
        f"RSS grew by {grew / 2**20:.1f} MB over the idle worker while draining a "
        f"{backlog / 2**20:.1f} MB backlog: the backlog is being held, not bounded"
    )


# -- F1 ----------------------------------------------------------------------------------------

F1_RECORDS = 8_000
F1_CAPS = {
    "max_in_flight": 64,
    "max_in_flight_bytes": 64 << 10,
    "worker_max_in_flight": 256,
    "worker_max_in_flight_bytes": 512 << 10,
}


def test_a_backlog_behind_a_slow_handler_is_paused_bounded_and_drained(
    broker: Broker, tmp_path: Path
) -> None:
    """F1: back-pressure pauses, memory stays bounded, nothing fetched is lost, the lag drains."""
    topic = broker.topic(4)
    warmup = [_record(p, f"k{p}", p) for p in range(4)]
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}", "pad": PAD}))
               for i in range(4, 4 + F1_RECORDS)]  # fmt: skip
    total = len(warmup) + len(records)
    backlog = sum(len(v) for _, v in records)
    spec = ledger_app(extra={"lease_ttl": 3, **F1_CAPS})
    drain, _ = _drain(broker, tmp_path, spec, topic, 4, warmup,
                      lambda: broker.produce(topic, records), total,
                      HANDLER_SLEEP="0.002")  # fmt: skip

    pauses = drain.metrics.total("streamq_partition_pauses_total")
    assert pauses > 0, "back-pressure never paused a partition: the caps did not bite"
    consumed = drain.metrics.total("streamq_records_consumed_total")
    handled = drain.metrics.total("streamq_records_handled_total")
    # Every record the worker fetched was handled, once: none fetched before a pause was
    # dropped (faust #88), and none was fetched twice because a pause threw it away.
    assert consumed == handled == total, (consumed, handled)
    produced = {i for i, *_ in warmup} | {i for i, _ in records}
    dupes = check_run(drain.entries, produced=produced, starts=drain.starts)
    assert dupes == [], f"records handled twice without any fault: {dupes[:10]}"
    check_commits(drain.samples, drain.entries)
    _check_memory(drain, backlog, f"F1 {broker.kind}")
    print(f"F1 {broker.kind}: {pauses:.0f} pauses; at the end none paused, the lag 0")


# -- F3 ----------------------------------------------------------------------------------------

F3_PARTITIONS = 64
F3_PER_PARTITION = 200
F3_CAPS = {
    "max_in_flight": 16,
    "max_in_flight_bytes": 16 << 10,
    "worker_max_in_flight": 4096,
    "worker_max_in_flight_bytes": 1 << 20,
}


def test_sixty_four_partitions_on_one_worker_stay_bounded_and_ordered(
    broker: Broker, tmp_path: Path
) -> None:
    """F3: no per-partition blow-up of memory or threads (faust #455); I1, I3 per partition."""
    topic = broker.topic(F3_PARTITIONS)
    warmup = [_record(p, f"p{p}", p) for p in range(F3_PARTITIONS)]
    items = [_record(n, f"p{n % F3_PARTITIONS}", n % F3_PARTITIONS)
             for n in range(F3_PARTITIONS, F3_PARTITIONS * (1 + F3_PER_PARTITION))]  # fmt: skip
    total = len(warmup) + len(items)
    backlog = sum(len(v) for *_, v in items)
    spec = ledger_app(extra={"lease_ttl": 3, **F3_CAPS})
    drain, (coords, _) = _drain(
        broker, tmp_path, spec, topic, F3_PARTITIONS, warmup,
        lambda: _send(broker.url, topic, items), total, HANDLER_SLEEP="0.0005",
    )  # fmt: skip

    filled = {partition for partition, _ in coords.values()}
    assert len(filled) == F3_PARTITIONS, f"records landed in only {len(filled)} partitions"
    assert drain.metrics.total("streamq_partition_pauses_total") > 0, "the caps never bit"
    by_partition = drain.metrics.by("streamq_records_handled_total", "partition")
    assert len(by_partition) == F3_PARTITIONS and set(by_partition.values()) == {
        F3_PER_PARTITION + 1
    }, by_partition
    produced = {i for i, *_ in warmup + items}
    dupes = check_run(drain.entries, produced=produced, starts=drain.starts)
    assert dupes == [], f"records handled twice without any fault: {dupes[:10]}"
    check_commits(drain.samples, drain.entries)
    _check_memory(drain, backlog, f"F3 {broker.kind}")
    assert max(drain.threads) < F3_PARTITIONS, (
        f"{max(drain.threads)} threads for {F3_PARTITIONS} partitions: threads grow with them"
    )


# -- F5 ----------------------------------------------------------------------------------------

HOT_APP = app_spec("hot_key")  # tests/apps/hot_key.py: a sync key-ordered handler
HOT_RECORDS = 3600
COLD_KEYS = 40
COLD_PER_KEY = 10


def test_a_hot_key_does_not_starve_the_other_keys(broker: Broker, tmp_path: Path) -> None:
    """F5: 90% of the records on one key; the other key lanes go on beside it."""
    topic = broker.topic(2)
    # the hot key's burst first, the cold keys behind it
    items = [_record(i, "hot", pad="") for i in range(HOT_RECORDS)]
    items += [_record(HOT_RECORDS + n, f"c{n % COLD_KEYS}", pad="")
              for n in range(COLD_KEYS * COLD_PER_KEY)]  # fmt: skip
    drain, (coords, sent) = _drain(broker, tmp_path, HOT_APP, topic, 2, [],
                                   lambda: _send(broker.url, topic, items), len(items),
                                   HANDLER_SLEEP="0.002")  # fmt: skip

    keys = {i: key for i, key, *_ in items}
    hot_partition = coords[0][0]
    behind = {i for i in keys if keys[i] != "hot" and coords[i][0] == hot_partition}
    # The fault: cold records really sit behind the whole burst in the hot key's partition.
    assert behind and min(coords[i][1] for i in behind) > coords[HOT_RECORDS - 1][1]

    # I1, I10 and I3 per key (lanes run a partition's offsets out of order on purpose).
    handled = {e.id for e in drain.entries}
    lost = sorted({i for i, *_ in items} - handled)
    assert not lost, f"I1 lost-write: {len(lost)} ids never handled, first {lost[:10]}"
    for e in drain.entries:
        assert coords[e.id] == (e.partition, e.offset), f"I10 inconsistent-offsets: {e}"
    check_per_key_order(drain.entries)
    assert duplicates(drain.entries) == []
    check_commits(drain.samples, drain.entries)

    last_hot_start = max(s.mono_ns for s in drain.starts if s.key == "hot")
    ends = {e.id: e.mono_ns for e in drain.entries}
    cold_keys = {keys[i] for i in behind}
    all_done_early = {k for k in cold_keys
                      if all(ends[i] < last_hot_start for i in behind if keys[i] == k)}  # fmt: skip
    # Key lanes at work: the cold keys behind the burst finish while the hot key still has
    # a backlog. A key hashed onto the hot key's lane waits for it (1 in 256 per key), so
    # this asks for most of them, not all.
    assert len(all_done_early) * 2 > len(cold_keys), (
        f"only {len(all_done_early)} of {len(cold_keys)} cold keys behind the hot burst were "
        "done before its last record started"
    )

    latency = {e.id: (e.mono_ns - sent[e.id]) / 1e6 for e in drain.starts}
    hot_ms = statistics.median(ms for i, ms in latency.items() if keys[i] == "hot")
    cold_ms = statistics.median(ms for i, ms in latency.items() if keys[i] != "hot")
    behind_ms = statistics.median(ms for i, ms in latency.items() if i in behind)
    print(
        f"\nF5 {broker.kind}: median start latency hot {hot_ms:.0f} ms, cold {cold_ms:.0f} ms "
        f"(cold behind the burst {behind_ms:.0f} ms); {len(all_done_early)}/{len(cold_keys)} "
        f"cold keys of the hot partition done before the hot key's last record started; RSS "
        f"{drain.baseline_kb / 1024:.0f} -> {max(drain.rss_kb) / 1024:.0f} MB"
    )
