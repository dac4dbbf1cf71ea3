"""Handlers that produce (``streamq.Out``), on memory:// and on both cores.

What users unit-test their pipelines with: every handler shape that may produce, the default
key, both guarantees, a dead-lettered input publishing nothing, a bad result failing clearly.
The brokers' own exactly-once proof runs on Apache Kafka and Redis (tests/fault).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import streamq
from streamq import Message, Out, Producer, TopicPartition
from streamq.brokers.memory import get_log, parse_url
from streamq.errors import ConfigError, UnknownTopicOrPartition
from streamq.offsets import OffsetTracker
from streamq.pipeline import Output, outputs_of
from streamq.runtime.outbox import Outbox
from tests.core import COMPILED, PURE_PYTHON, Core

GUARANTEES = ["at_least_once", "exactly_once"]


class Invoice(BaseModel):
    order: int
    total: float


@pytest.fixture(autouse=True)
def whole_core(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    core.install(monkeypatch)


def records(url: str, topic: str) -> list[tuple]:
    """(partition, key, value, headers) of every record of ``topic``, partition by partition."""
    parts = get_log(parse_url(url)[0]).topics.get(topic, [])
    return [(p, k, v, h) for p, part in enumerate(parts) for (k, v, h, _) in part]


def values(url: str, topic: str) -> list:
    return [orjson.loads(v) for _, _, v, _ in records(url, topic)]


def make_app(url: str, guarantee: str = "at_least_once", **settings) -> streamq.App:
    return streamq.App(
        "svc", broker=url, poll_timeout=0.02, commit_interval=0.05, guarantee=guarantee, **settings
    )


def produce(url: str, n: int, topic: str = "orders") -> None:
    with Producer(url) as p:
        for i in range(n):
            p.send(topic, {"id": i, "n": i}, key=f"k{i % 5}")


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_three_stage_chain_keeps_keys_and_order(memory_url: str, guarantee: str) -> None:
    app = make_app(memory_url, guarantee)

    @app.handler("orders")
    def invoice(order: dict) -> Out:
        return Out("invoices", Invoice(order=order["id"], total=order["n"] * 1.5))

    @app.handler("invoices", group="mailer")
    def email(inv: Invoice, msg: Message) -> Iterator[Out]:
        yield Out("emails", {"to": inv.order}, headers={"stage": "email"})
        yield Out("audit", {"seen": inv.order}, key=b"audit")

    produce(memory_url, 60)
    app.run(until_idle=0.3)

    orders = records(memory_url, "orders")
    emails = records(memory_url, "emails")
    assert sorted(v["to"] for v in values(memory_url, "emails")) == list(range(60))
    assert {v["seen"] for v in values(memory_url, "audit")} == set(range(60))
    assert {k for _, k, _, _ in records(memory_url, "audit")} == {b"audit"}
    # the input's key carries through both stages, so each key's records stay in order
    key_of = {orjson.loads(v)["id"]: k for _, k, v, _ in orders}
    for _, k, v, h in emails:
        assert k == key_of[orjson.loads(v)["to"]]
        assert h == [("stage", b"email")]
    by_key: dict[bytes, list[int]] = {}
    for _, k, v, _ in emails:
        by_key.setdefault(k, []).append(orjson.loads(v)["to"])
    assert all(ids == sorted(ids) for ids in by_key.values())


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_every_handler_shape_produces(memory_url: str, guarantee: str) -> None:
    app = make_app(memory_url, guarantee)

    @app.handler("a")
    async def one_async(v: dict) -> Out:
        return Out("out", {"from": "a", "id": v["id"]})

    @app.handler("b")
    async def gen_async(v: dict) -> AsyncIterator[Out]:
        yield Out("out", {"from": "b", "id": v["id"]})

    @app.handler("c", batch=True, max_batch=7)
    def batch(msgs: list[Message]) -> list[Out]:
        return [Out("out", {"from": "c", "id": orjson.loads(m.value)["id"]}) for m in msgs]

    @app.handler("d", executor="threads")
    def threads(v: dict) -> list[Out]:
        return [Out("out", {"from": "d", "id": v["id"]})]

    @app.handler("e")
    def unannotated(v: dict):  # unannotated: may produce
        return Out("out", {"from": "e", "id": v["id"]}) if v["id"] % 2 else None

    for topic in "abcde":
        produce(memory_url, 20, topic)
    app.run(until_idle=0.3)

    seen: dict[str, list[int]] = {}
    for v in values(memory_url, "out"):
        seen.setdefault(v["from"], []).append(v["id"])
    assert {k: sorted(ids) for k, ids in seen.items()} == {
        "a": list(range(20)),
        "b": list(range(20)),
        "c": list(range(20)),
        "d": list(range(20)),
        "e": list(range(1, 20, 2)),
    }


def produce_in_a_process(v: dict) -> list[Out]:
    return [Out("out", {"id": v["id"]}), Out("copies", {"id": v["id"]})]


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_process_pool_handler_produces(memory_url: str, guarantee: str) -> None:
    app = make_app(memory_url, guarantee)
    app.handler("orders", executor="processes")(produce_in_a_process)
    produce(memory_url, 30)
    app.run(until_idle=0.5)
    assert sorted(v["id"] for v in values(memory_url, "out")) == list(range(30))
    assert sorted(v["id"] for v in values(memory_url, "copies")) == list(range(30))


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_dead_lettered_input_publishes_none_of_its_outputs(
    memory_url: str, guarantee: str
) -> None:
    app = make_app(memory_url, guarantee)
    calls: list[int] = []

    @app.handler("orders", max_retries=2, retry_backoff=0.0, retry_backoff_max=0.0)
    def half_way(v: dict) -> Iterator[Out]:
        calls.append(v["id"])
        yield Out("out", {"id": v["id"], "part": 1})
        if v["id"] == 7:
            raise ValueError("fails after its first output")
        yield Out("out", {"id": v["id"], "part": 2})

    produce(memory_url, 10)
    app.run(until_idle=0.3)
    assert calls.count(7) == 3  # the failure really happened, on every attempt
    out = values(memory_url, "out")
    assert sorted((v["id"], v["part"]) for v in out) == [
        (i, part) for i in range(10) if i != 7 for part in (1, 2)
    ]
    dead = records(memory_url, "orders.dlq")
    assert len(dead) == 1 and orjson.loads(dead[0][2])["id"] == 7


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ({"topic": "x"}, "returned a dict"),
        ([Out("x", 1), "nope"], "a result holding a str"),
        (Out("", 1), "Out.topic: must be a non-empty string"),
        (Out("x", object()), "cannot encode object"),
    ],
)
def test_a_result_that_is_not_out_records_fails_the_record_clearly(
    memory_url: str, result: object, words: str
) -> None:
    app = make_app(memory_url)

    @app.handler("orders", max_retries=0)
    def wrong(v: dict):
        return result

    produce(memory_url, 1)
    app.run(until_idle=0.3)
    dead = records(memory_url, "orders.dlq")
    assert len(dead) == 1
    headers = dict(dead[0][3])
    assert words in headers["streamq-error-message"].decode()
    assert records(memory_url, "x") == []


def test_exactly_once_refuses_at_most_once_handlers(memory_url: str) -> None:
    app = make_app(memory_url, "exactly_once")

    @app.handler("orders", commit="before")
    def at_most_once(m: Message) -> None: ...

    produce(memory_url, 1)
    with pytest.raises(ConfigError, match="contradicts guarantee='exactly_once'"):
        app.run(until_idle=0.2)


def test_the_guarantee_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="guarantee"):
        streamq.App("svc", guarantee="maybe")


def test_outputs_of_encodes_and_defaults_the_key() -> None:
    outs = outputs_of(
        [Out("t", {"a": 1}), Out("t", b"raw", key="k", headers=[("h", "v")]), Out("t", None)],
        b"input-key",
    )
    assert outs == [
        Output("t", b'{"a":1}', b"input-key", None),
        Output("t", b"raw", b"k", [("h", b"v")]),
        Output("t", None, b"input-key", None),
    ]
    assert outputs_of(None, b"k") == [] and outputs_of(iter(()), b"k") == []
    with pytest.raises(TypeError, match="returned a bytes"):
        outputs_of(b"not a record", None)


# -- the outbox on its own: what the committer asks of it -----------------------------------


class FakeProducer:
    """Publishes nothing: the test acknowledges or refuses each record itself."""

    def __init__(self) -> None:
        self.published: list[tuple[Output, object]] = []

    def publish(self, outputs, delivered) -> None:
        self.published.extend((out, delivered) for out in outputs)

    def ack(self, i: int, exc: BaseException | None = None) -> None:
        out, delivered = self.published[i]
        delivered(exc, out if exc is not None else None)


def outbox(exactly_once: bool) -> tuple[Outbox, FakeProducer, TopicPartition, int]:
    producer = FakeProducer()
    tracker = OffsetTracker()
    tp = TopicPartition("orders", 0)
    epoch = tracker.assign(tp)
    return Outbox("g", producer, tracker, exactly_once=exactly_once), producer, tp, epoch


def msg(offset: int) -> Message:
    return Message("orders", 0, offset, b"k", b"{}", None, 0)


def test_at_least_once_commits_positions_once_their_outputs_are_acknowledged() -> None:
    box, producer, tp, epoch = outbox(exactly_once=False)
    box._put(tp, epoch, 3, [Output("out", b"3", b"k", None)])
    box._put(tp, epoch, 5, [Output("out", b"5", b"k", None)])
    box.gate(positions := {tp: 10})
    assert positions == {}  # nothing acknowledged yet: nothing may be committed
    producer.ack(0)
    box._put(tp, epoch, 12, [Output("out", b"12", b"k", None)])
    box.gate(positions := {tp: 20})
    assert positions == {}  # the first generation still waits for "5"
    assert box.refused == set()
    producer.ack(1, RuntimeError("refused"))
    box.gate(positions := {tp: 20})
    assert positions == {} and producer.published[-1][0].value == b"5"  # published again
    assert box.refused == {tp}  # the runner keeps the partitions paused meanwhile
    producer.ack(3)  # the second "5" is in: the first generation is done
    box.gate(positions := {tp: 25})
    assert positions == {tp: 10}  # released as that generation saw them
    producer.ack(2)  # "12"
    box.gate(positions := {tp: 30})
    assert positions == {tp: 30} and box.waiting() == 0 and box.refused == set()


def test_a_publish_that_raises_holds_no_commit_back() -> None:
    """publish raises only before queueing anything: none of those outputs will report."""
    box, producer, tp, epoch = outbox(exactly_once=False)

    def refuse(outputs, delivered) -> None:
        raise UnknownTopicOrPartition("out has 1 partitions; no partition 3")

    producer.publish = refuse  # type: ignore[method-assign]
    with pytest.raises(UnknownTopicOrPartition):
        box._put(tp, epoch, 1, [Output("out", b"1", None, None, 3)])
    box.gate(positions := {tp: 2})
    assert positions == {tp: 2} and box.waiting() == 0


def test_at_least_once_bound_invoke_publishes_each_result_at_once(memory_url: str) -> None:
    box, producer, tp, epoch = outbox(exactly_once=False)
    app = make_app(memory_url)

    @app.handler("orders")
    def handle(m: Message) -> Out | None:
        return Out("out", {"n": m.offset}) if m.offset else None

    spec = box.bind(app.handlers[("svc", "orders")], tp, epoch)
    spec.invoke(msg(0))
    spec.invoke(msg(1))
    assert [out for out, _ in producer.published] == [Output("out", b'{"n":1}', b"k", None)]
    assert box.waiting() == 1  # sent, not yet acknowledged


def test_at_least_once_never_releases_a_position_of_an_ended_ownership() -> None:
    box, producer, tp, epoch = outbox(exactly_once=False)
    box._put(tp, epoch, 1, [Output("out", b"1", None, None)])
    box.gate(positions := {tp: 2})
    assert positions == {}
    box._tracker.revoke(tp)
    box._tracker.assign(tp)  # given back: a new epoch, its own position
    producer.ack(0)
    box.gate(positions := {})
    assert positions == {}


def test_exactly_once_takes_outputs_below_the_position_in_input_order() -> None:
    box, producer, tp, epoch = outbox(exactly_once=True)
    for offset in (4, 1, 2):
        box._put(tp, epoch, offset, [Output("out", str(offset).encode(), None, None)])
    assert [o.value for o in box.take({tp: 3})] == [b"1", b"2"]
    assert producer.published == []  # nothing leaves before the transaction
    assert [o.value for o in box.take({tp: 3})] == [b"1", b"2"]  # a failed commit: again
    box.settle()
    assert [o.value for o in box.take({tp: 5})] == [b"4"]
    box._put(tp, epoch - 1, 6, [Output("out", b"stale", None, None)])  # an ended epoch
    box.settle()
    assert box.take({tp: 10}) == [] and box.waiting() == 0


def test_exactly_once_keeps_one_handling_per_input() -> None:
    """A second handling of an input replaces the first: only one set is ever published."""
    box, _, tp, epoch = outbox(exactly_once=True)
    box._put(tp, epoch, 1, [Output("out", b"first", None, None)])
    box._put(tp, epoch, 1, [])
    assert box.take({tp: 2}) == []


def test_bound_invoke_puts_under_the_lanes_epoch(memory_url: str) -> None:
    box, _, tp, epoch = outbox(exactly_once=True)
    app = make_app(memory_url)

    @app.handler("orders")
    def handle(m: Message) -> Out | None:
        return Out("out", m.value) if m.offset else None

    spec = box.bind(app.handlers[("svc", "orders")], tp, epoch)
    spec.invoke(msg(0))
    spec.invoke(msg(1))
    assert box.take({tp: 2}) == [Output("out", b"{}", b"k", None)]


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_the_readme_example_runs(guarantee: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "STREAMQ_GUARANTEE": guarantee}
    env.pop("STREAMQ_BROKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "examples.pipeline"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "emails 999, audit 999, orders.dlq 1" in result.stdout


def test_an_out_to_an_undeclared_topic_fails_the_call(memory_url: str) -> None:
    app = make_app(memory_url)

    @app.handler("orders", outputs=["invoices"], max_retries=0)
    def typo(v: dict) -> Out:
        return Out("invoice", v)  # not "invoices"

    produce(memory_url, 1)
    app.run(until_idle=0.3)
    dead = records(memory_url, "orders.dlq")
    assert len(dead) == 1
    message = dict(dead[0][3])["streamq-error-message"].decode()
    assert "'invoice' is not among the handler's outputs (invoices)" in message
    assert records(memory_url, "invoice") == []
    with pytest.raises(ConfigError, match="outputs: must be a list of topic names"):
        app.handler("more", outputs=[""])(typo)


# -- the compiled outputs_of against its twin -----------------------------------------------------

_values = st.one_of(
    st.none(), st.binary(max_size=8), st.text(max_size=4), st.integers(), st.floats(),
    st.dictionaries(st.text(max_size=3), st.integers() | st.floats() | st.none(), max_size=3),
    st.lists(st.integers(), max_size=3), st.just({"x": object()}), st.just(object()),
    st.builds(bytearray, st.binary(max_size=4)),
)  # fmt: skip
_outs = st.builds(
    Out,
    st.sampled_from(["t", "", "u"]) | st.integers(),
    _values,
    st.none() | st.binary(max_size=4) | st.text(max_size=4) | st.integers() | st.just(1.5),
    st.sampled_from([None, {}, {"h": "v"}, [("h", b"v")]]),
)  # delay: its due is the clock's, so two calls differ by the time between them


@pytest.mark.cython
@given(
    result=st.none() | _outs | st.lists(_outs, max_size=3) | st.just(b"x") | st.just({"a": 1}),
    input_key=st.none() | st.binary(max_size=3),
    allowed=st.sampled_from([None, frozenset({"t"})]),
)
def test_the_compiled_outputs_of_encodes_and_refuses_as_its_twin(
    result: object, input_key: bytes | None, allowed: frozenset[str] | None
) -> None:
    assert COMPILED is not None

    def run(outputs_of: Callable[..., list[Output]]) -> object:
        try:
            return [(type(o), tuple(o)) for o in outputs_of(result, input_key, allowed)]
        except Exception as exc:
            return type(exc), str(exc)

    assert run(COMPILED.outputs_of) == run(PURE_PYTHON.outputs_of)


@pytest.mark.cython
def test_the_compiled_outputs_of_leaves_a_delayed_record_to_its_twin() -> None:
    assert COMPILED is not None
    [out] = COMPILED.outputs_of(Out("t", {"a": 1}, delay=60), b"k")
    assert out[:5] == ("t", b'{"a":1}', b"k", None, None) and out.due is not None
