"""Queue mode on memory://: ``ordering="none"`` (registration, the worker-wide concurrency
cap, retries that hold back no one else, gap-safe commits) and what ``group_type="share"``
checks and plans without a broker (the brokers' share groups: tests/integration).

Counts, never timings: how many handler calls ran at once is counted by the handler itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import orjson
import pytest

import streamq
from streamq.brokers.memory import get_log, parse_url
from streamq.brokers.view import read_topic
from streamq.errors import ConfigError
from streamq.handlers import DEFAULT_CONCURRENCY, Executor, GroupType, Ordering
from streamq.runtime.lanes import Probe
from streamq.runtime.share import redelivered_units
from streamq.settings import load_settings


def url(partitions: int = 4) -> str:
    return f"memory://none-{uuid.uuid4().hex[:8]}?partitions={partitions}"


class Gauge:
    """Handler calls running now, and the most ever at once (any thread)."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def produce(broker: str, topic: str, n: int, keys: int = 50) -> None:
    with streamq.Producer(broker) as producer:
        for i in range(n):
            producer.send(topic, {"i": i}, key=f"k{i % keys}")


def test_registration_defaults_and_refusals() -> None:
    app = streamq.App("a", broker=url())

    @app.handler("async", ordering="none")
    async def a(value: dict) -> None: ...

    @app.handler("sync", ordering="none", concurrency=8)
    def s(value: dict) -> None: ...

    @app.handler("inline", ordering="none", executor="inline")
    def i(value: dict) -> None: ...

    specs = {topic: spec for (_, topic), spec in app.handlers.items()}
    assert specs["async"].ordering is Ordering.NONE
    assert specs["async"].concurrency == DEFAULT_CONCURRENCY
    assert specs["async"].executor is Executor.ASYNCIO
    assert specs["sync"].executor is Executor.THREADS  # the loop would run one at a time
    assert specs["sync"].concurrency == 8
    assert specs["inline"].executor is Executor.INLINE  # asked for: kept
    with pytest.raises(ConfigError, match="concurrency: needs ordering='none'"):
        app.handler("p", concurrency=4)(s)
    with pytest.raises(ConfigError, match="concurrency: must be an integer from 1 to 4096"):
        app.handler("q", ordering="none", concurrency=0)(s)
    with pytest.raises(ConfigError, match="ordering"):
        app.handler("r", ordering="random")(s)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["async", "threads"])
def test_at_most_concurrency_calls_run_at_once_across_partitions(kind: str) -> None:
    """Four partitions, concurrency 6: the cap is the worker's, not each partition's; and
    it is reached (records of one partition do overlap)."""
    broker = url(4)
    app = streamq.App("g", broker=broker, max_poll_records=400)
    gauge, seen = Gauge(), []

    if kind == "async":

        @app.handler("t", ordering="none", concurrency=6)
        async def handle(value: dict) -> None:
            with gauge:
                await asyncio.sleep(0.005)
            seen.append(value["i"])

    else:

        @app.handler("t", ordering="none", concurrency=6)
        def handle(value: dict) -> None:
            with gauge:
                time.sleep(0.005)
            seen.append(value["i"])

    produce(broker, "t", 400)
    app.run(until_idle=1.0)
    assert sorted(seen) == list(range(400))
    assert gauge.most == 6


def test_one_partition_runs_records_in_parallel_and_out_of_order() -> None:
    broker = url(1)
    app = streamq.App("g", broker=broker)
    gauge, seen = Gauge(), []

    @app.handler("t", ordering="none", concurrency=16)
    async def handle(value: dict) -> None:
        with gauge:
            await asyncio.sleep(0.01 if value["i"] % 7 else 0.03)
        seen.append(value["i"])

    produce(broker, "t", 320)
    app.run(until_idle=1.0)
    assert sorted(seen) == list(range(320))
    assert seen != sorted(seen)  # nothing kept them in order
    assert gauge.most == 16
    assert app.stats.handled["t"] == 320


def test_a_record_retrying_holds_back_only_its_own_unit() -> None:
    """Record 0 fails twice with a 0.3 s backoff each: while it waits, every other record of
    the partition is handled (the last ones before record 0 finally succeeds)."""
    broker = url(1)
    app = streamq.App("g", broker=broker)
    order: list[int] = []
    attempts: list[int] = []

    @app.handler("t", ordering="none", concurrency=8, max_retries=2, retry_backoff=0.3,
                 retry_jitter=False)  # fmt: skip
    async def handle(value: dict) -> None:
        if value["i"] == 0:
            attempts.append(0)
            if len(attempts) < 3:
                raise ValueError("not yet")
        order.append(value["i"])

    produce(broker, "t", 400)
    app.run(until_idle=1.0)
    assert sorted(order) == list(range(400)) and len(attempts) == 3
    after = order.index(0)
    held = set(range(1, 16))  # its unit: at most UNORDERED_UNIT records, itself included
    late = set(order[after + 1 :])
    assert late <= held, f"records outside record 0's unit waited for it: {sorted(late - held)}"
    assert order.index(399) < after


def test_a_poison_record_goes_to_the_dlq_and_the_rest_flows() -> None:
    broker = url(2)
    app = streamq.App("g", broker=broker)
    seen: list[int] = []

    @app.handler("t", ordering="none", concurrency=4, max_retries=1, retry_backoff=0.01)
    async def handle(value: dict) -> None:
        if value["i"] in (5, 77):
            raise ValueError("poison")
        seen.append(value["i"])

    produce(broker, "t", 200)
    app.run(until_idle=1.0)
    assert sorted(seen) == sorted(set(range(200)) - {5, 77})
    dead = read_topic(broker, "t.dlq", load_settings(broker=broker))
    assert sorted(orjson.loads(d.value)["i"] for d in dead) == [5, 77]


def test_commits_never_pass_an_unfinished_record() -> None:
    """A slow record early in the partition: while it runs, the group's committed position
    stays at or below it, however many records after it are done; then it moves to the end."""
    broker = url(1)
    app = streamq.App("g", broker=broker, commit_interval=0.02)
    tp = streamq.TopicPartition("t", 0)
    group = get_log(parse_url(broker)[0]).groups
    while_held: list[tuple[int, int | None]] = []

    @app.handler("t", ordering="none", concurrency=8)
    async def handle(value: dict) -> None:
        if value["i"] == 3:
            for _ in range(15):  # the commit loop runs many times meanwhile
                await asyncio.sleep(0.02)
                while_held.append((app.stats.handled["t"], group["g"].committed.get(tp)))

    produce(broker, "t", 200)
    app.run(until_idle=1.0)
    assert while_held[-1][0] > 100  # the rest ran meanwhile
    assert all(position is None or position <= 3 for _, position in while_held), while_held
    assert group["g"].committed[tp] == 200


# -- group_type="share" ---------------------------------------------------------------------


def test_share_groups_imply_no_order_and_refuse_what_they_cannot_do() -> None:
    app = streamq.App("a", broker=url())

    @app.handler("jobs", group_type="share", concurrency=8)
    async def job(value: dict) -> None: ...

    spec = app.handlers[("a", "jobs")]
    assert spec.group_type is GroupType.SHARE and spec.ordering is Ordering.NONE
    assert spec.concurrency == 8
    with pytest.raises(ConfigError, match="no order to keep"):
        app.handler("x", group="b", group_type="share", ordering="key")(job)
    with pytest.raises(ConfigError, match="at-most-once needs a classic group"):
        app.handler("y", group="c", group_type="share", commit="before")(job)
    with pytest.raises(ConfigError, match="a group is either classic or share"):
        app.handler("z", group="a")(job)  # group "a" is a share group already
    with pytest.raises(ConfigError, match="group_type"):
        app.handler("w", group="d", group_type="queue")(job)  # type: ignore[arg-type]


def test_a_share_group_refuses_exactly_once_when_it_starts() -> None:
    app = streamq.App("a", broker=url(), guarantee="exactly_once")

    @app.handler("jobs", group_type="share")
    async def job(value: dict) -> None: ...

    with pytest.raises(ConfigError, match=r"exactly_once.*needs a classic group"):
        app.run(until_idle=0.5)


def test_redelivered_records_run_alone_in_order() -> None:
    """A first redelivery runs with the rest (a dead member's innocent records); from the
    third delivery a record runs alone, counting its lone runs."""
    msgs = [streamq.Message("t", 0, i, None, b"{}") for i in range(7)]
    msgs[1].attempt = 2
    msgs[2].attempt = 3
    msgs[3].attempt = 5
    units = redelivered_units(msgs)
    assert [[m.offset for m in u] for u in units] == [[0, 1], [2], [3], [4, 5, 6]]
    assert [type(u) for u in units] == [list, Probe, Probe, list]
    assert [u.starts for u in units if isinstance(u, Probe)] == [0, 2]


def test_a_share_group_on_memory_runs_like_a_classic_one() -> None:
    broker = url(2)
    app = streamq.App("g", broker=broker)
    gauge, seen = Gauge(), []

    @app.handler("t", group_type="share", concurrency=4)
    async def handle(value: dict) -> None:
        with gauge:
            await asyncio.sleep(0.005)
        seen.append(value["i"])

    produce(broker, "t", 100)
    app.run(until_idle=1.0)
    assert sorted(seen) == list(range(100)) and gauge.most == 4
