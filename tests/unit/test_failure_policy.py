"""Issue 5 policies on memory://: which errors retry, handler timeouts, and the DLQ limit."""

from __future__ import annotations

import asyncio

import pytest

from streamq import ConfigError, Message, PartitionHalted, Producer, TopicPartition
from tests.core import Core

from .test_app_memory import committed, dlq_records, make_app


@pytest.fixture(autouse=True)
def whole_core(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    core.install(monkeypatch)


def send(url: str, n: int, topic: str = "t") -> None:
    with Producer(url) as p:
        for i in range(n):
            p.send(topic, {"i": i})


def attempts_by_id(calls: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, attempt in calls:
        out.setdefault(i, []).append(attempt)
    return out


def test_dont_retry_on_and_retry_on_pick_what_earns_retries(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    calls: list[tuple[int, int]] = []
    failures = {0: KeyError("missing"), 1: ConnectionError("flaky"), 2: ValueError("bad")}

    @app.handler("t", max_retries=2, retry_backoff=0.001, retry_on=(ConnectionError, ValueError),
                 dont_retry_on=(ValueError,))  # fmt: skip
    def handle(value: dict, msg: Message) -> None:
        calls.append((value["i"], msg.attempt))
        if value["i"] in failures:
            raise failures[value["i"]]

    send(url, 4)
    app.run(until_idle=0.2)
    seen = attempts_by_id(calls)
    assert seen[0] == [1]  # KeyError: not in retry_on, dead-lettered at once
    assert seen[1] == [1, 2, 3]  # ConnectionError: retried
    assert seen[2] == [1]  # ValueError: in retry_on but excluded by dont_retry_on
    assert seen[3] == [1]
    types = sorted(dict(r[2])["streamq-error-type"] for r in dlq_records(url, "t.dlq"))
    assert types == [b"builtins.ConnectionError", b"builtins.KeyError", b"builtins.ValueError"]


def test_a_hung_async_handler_times_out_and_the_others_keep_flowing(memory_url: str) -> None:
    url = memory_url + "?partitions=2"
    app = make_app(url)
    handled: list[int] = []

    @app.handler("t", timeout=0.05, max_retries=1, retry_backoff=0.001)
    async def handle(value: dict, msg: Message) -> None:
        if value["i"] == 0:
            await asyncio.sleep(3600)  # hangs
        handled.append(value["i"])

    with Producer(url) as p:
        for i in range(10):
            p.send("t", {"i": i}, partition=i % 2)
    app.run(until_idle=0.2)
    assert sorted(handled) == list(range(1, 10))
    (dead,) = dlq_records(url, "t.dlq")
    headers = dict(dead[2])
    assert headers["streamq-error-type"] == b"builtins.TimeoutError"
    assert headers["streamq-attempts"] == b"2"
    assert committed(url) == {TopicPartition("t", 0): 5, TopicPartition("t", 1): 5}


def test_timeout_on_a_sync_handler_is_refused(memory_url: str) -> None:
    app = make_app(memory_url)

    def sync_handler(m: Message) -> None: ...

    with pytest.raises(ConfigError, match="timeout: needs an async handler"):
        app.handler("t", timeout=1.0)(sync_handler)
    with pytest.raises(ConfigError, match="timeout: needs an async handler"):
        app.handler("t", timeout=1.0, executor="threads")(sync_handler)
    # a pool process can be ended: its timer kills it (tests/fault/test_handler_faults.py, D4)
    from tests.unit.test_handlers import module_level_handler

    app.handler("p", timeout=1.0, executor="processes")(module_level_handler)


def test_bad_policy_options_are_reported_together(memory_url: str) -> None:
    app = make_app(memory_url)

    async def h(m: Message) -> None: ...

    with pytest.raises(ConfigError) as info:
        app.handler("t", retry_on=("ValueError",), timeout=-1, dlq_limit=0)(h)  # type: ignore[arg-type]
    text = str(info.value)
    assert "retry_on" in text and "timeout" in text and "dlq_limit" in text


def test_dlq_limit_halts_the_partition_after_a_run_of_dead_letters(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    handled = []

    @app.handler("t", max_retries=0, dlq_limit=3)
    def handle(value: dict) -> None:
        if 2 <= value["i"] < 12:
            raise RuntimeError("bad deploy")
        handled.append(value["i"])

    send(url, 15)
    with pytest.raises(PartitionHalted, match=r"t\[0\]"):
        app.run(until_idle=0.2)
    assert handled == [0, 1]
    assert len(dlq_records(url, "t.dlq")) == 3  # not the whole topic
    assert committed(url) == {TopicPartition("t", 0): 5}  # halted at the 4th in a row


def test_dlq_limit_counts_only_consecutive_dead_letters(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)

    @app.handler("t", max_retries=0, dlq_limit=1)
    def handle(value: dict) -> None:
        if value["i"] % 2:
            raise RuntimeError("every other record")

    send(url, 10)
    app.run(until_idle=0.2)  # alternating failures never make a run of two
    assert len(dlq_records(url, "t.dlq")) == 5
    assert committed(url) == {TopicPartition("t", 0): 10}


def rewind(url: str, group: str = "svc") -> None:
    from streamq.brokers.memory import get_log, parse_url

    get_log(parse_url(url)[0]).group(group).committed.clear()


def test_a_rewound_group_with_dedup_handles_nothing_again(memory_url: str) -> None:
    app = make_app(memory_url)
    calls = []

    @app.handler("t", dedup="memory")
    def handle(value: dict) -> None:
        calls.append(value["i"])

    send(memory_url, 200)
    app.run(until_idle=0.2)
    assert sorted(calls) == list(range(200))
    rewind(memory_url)
    app.run(until_idle=0.2)
    assert len(calls) == 200  # 0 handler calls on the second pass
    assert app.stats.deduplicated["t"] == 200


def test_without_dedup_a_rewind_handles_everything_again(memory_url: str) -> None:
    app = make_app(memory_url)
    calls = []

    @app.handler("t")
    def handle(value: dict) -> None:
        calls.append(value["i"])

    send(memory_url, 50)
    app.run(until_idle=0.2)
    rewind(memory_url)
    app.run(until_idle=0.2)
    assert len(calls) == 100  # the control: the dedup test above is not passing vacuously


def test_a_business_key_suppresses_a_resent_duplicate(memory_url: str) -> None:
    app = make_app(memory_url)
    calls = []

    @app.handler("t", dedup="memory", dedup_key=lambda m: str(m.json()["order"]))
    def handle(value: dict) -> None:
        calls.append(value["order"])

    with Producer(memory_url) as p:
        for order in (1, 2, 1, 3, 2):
            p.send("t", {"order": order}, key="same-partition")
    app.run(until_idle=0.2)
    assert calls == [1, 2, 3]


class BrokenStore:
    def seen(self, keys):
        raise ConnectionError("store down")

    def mark(self, keys):
        raise ConnectionError("store down")


def test_an_unreachable_store_never_skips_or_blocks(memory_url: str) -> None:
    app = make_app(memory_url)
    calls = []

    @app.handler("t", dedup=BrokenStore())
    def handle(value: dict) -> None:
        calls.append(value["i"])

    send(memory_url, 100)
    app.run(until_idle=0.2)
    assert sorted(calls) == list(range(100))  # "not seen": nothing skipped
    assert sum(committed(memory_url).values()) == 100  # failed marks did not hold commits
