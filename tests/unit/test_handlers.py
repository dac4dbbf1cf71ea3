"""Registration validates eagerly and names the handler and parameter in every error."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import streamq
from streamq import ConfigError, Message


class Order(BaseModel):
    id: int


@pytest.fixture
def app(memory_url: str) -> streamq.App:
    return streamq.App("svc", broker=memory_url)


def _invoke(app: streamq.App, topic: str, msg: Message):
    return app.handlers[("svc", topic)].invoke(msg)


def test_payload_and_message_in_either_order(app: streamq.App) -> None:
    got = []

    @app.handler("a")
    def a(order: Order, msg: Message) -> None:
        got.append((order, msg.offset))

    @app.handler("b")
    def b(msg: Message, order: Order) -> None:
        got.append((order, msg.offset))

    @app.handler("c")
    def c(*, order: Order, m: Message) -> None:
        got.append((order, m.offset))

    @app.handler("d")
    def d(msg: Message) -> None:
        got.append((None, msg.offset))

    @app.handler("e")
    def e(order: Order, extra: int = 5) -> None:
        got.append((order, extra))

    for i, topic in enumerate("abcde"):
        _invoke(app, topic, Message(topic, 0, i, None, b'{"id": 1}'))
    assert got == [
        (Order(id=1), 0),
        (Order(id=1), 1),
        (Order(id=1), 2),
        (None, 3),
        (Order(id=1), 5),
    ]


def test_async_is_detected(app: streamq.App) -> None:
    @app.handler("a")
    async def a(order: Order) -> None: ...

    @app.handler("b")
    def b(order: Order) -> None: ...

    assert app.handlers[("svc", "a")].is_async and not app.handlers[("svc", "b")].is_async


def test_group_defaults_to_app_name_and_can_be_set(app: streamq.App) -> None:
    @app.handler("a")
    def a(m: Message) -> None: ...

    @app.handler("a", group="audit")
    def a2(m: Message) -> None: ...

    assert set(app.groups()) == {"svc", "audit"}
    assert app.handlers[("svc", "a")].dlq_topic == "a.dlq"


@pytest.mark.parametrize(
    ("define", "fragment"),
    [
        (lambda: lambda x: None, "parameter 'x' has no annotation"),
        (lambda: lambda: None, "takes no parameters"),
    ],
)
def test_unannotated_or_empty_signature(app: streamq.App, define, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        app.handler("t")(define())


def test_two_payloads_named(app: streamq.App) -> None:
    def h(a: Order, b: Order) -> None: ...

    with pytest.raises(
        ConfigError,
        match=r"handler 'test_two_payloads_named.<locals>.h' for topic 't'.*parameter 'b'",
    ):
        app.handler("t")(h)


def test_all_option_problems_listed_at_once(app: streamq.App) -> None:
    def h(m: Message) -> None: ...

    with pytest.raises(ConfigError) as info:
        app.handler(
            "t",
            ordering="random",
            commit="never",
            max_retries=-1,
            max_batch=0,
            dlq="",  # type: ignore[arg-type]
        )(h)
    problems = info.value.problems
    for word in ("ordering", "commit", "max_retries", "max_batch", "dlq"):
        assert any(word in p for p in problems), word
    assert all("handler" in p and "'t'" in p for p in problems)


def test_batch_signature_must_be_list_of_messages(app: streamq.App) -> None:
    @app.handler("ok", batch=True)
    def ok(batch: list[Message]) -> None: ...

    def bad(batch: list[Order]) -> None: ...

    with pytest.raises(ConfigError, match=r"list\[streamq\.Message\]"):
        app.handler("bad", batch=True)(bad)


def test_duplicate_topic_in_group_is_refused(app: streamq.App) -> None:
    @app.handler("t")
    def one(m: Message) -> None: ...

    with pytest.raises(ConfigError, match="already has handler"):

        @app.handler("t")
        def two(m: Message) -> None: ...


def test_dedup_must_name_a_store(app: streamq.App) -> None:
    def h(m: Message) -> None: ...

    with pytest.raises(ConfigError, match="is not 'memory', a redis:// URL"):
        app.handler("t", dedup=object())(h)
    with pytest.raises(ConfigError, match="dedup_key: must be a callable"):
        app.handler("t", dedup="memory", dedup_key="id")(h)  # type: ignore[arg-type]


def test_unresolvable_annotation(app: streamq.App) -> None:
    def h(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigError, match="cannot inspect"):
        app.handler("t")(h)


def test_app_settings_errors(memory_url: str) -> None:
    with pytest.raises(ConfigError, match="bogus: unknown setting"):
        streamq.App("x", broker=memory_url, bogus=1)
    with pytest.raises(ConfigError, match="unknown URL scheme 'ftp'"):
        streamq.Producer("ftp://x")
    with pytest.raises(ConfigError, match="not a broker URL"):
        streamq.Producer("localhost:9092")


def test_run_arguments_are_validated(app: streamq.App) -> None:
    with pytest.raises(ConfigError, match="no handlers"):
        app.run(until_idle=0)

    @app.handler("t")
    def h(m: Message) -> None: ...

    with pytest.raises(ConfigError, match="memory:// lives inside one process"):
        app.run(workers=2)
    with pytest.raises(ConfigError, match="workers"):
        app.run(workers=0)
    with pytest.raises(ConfigError, match="until_idle"):
        app.run(until_idle=-1)


def test_configure_rederives_dlq_topics(app: streamq.App) -> None:
    @app.handler("t")
    def h(m: Message) -> None: ...

    app.configure(dlq_suffix="-dead")
    assert app.handlers[("svc", "t")].dlq_topic == "t-dead"


def module_level_handler(msg: Message) -> None:
    """A handler the process pool can import by name."""


def test_executor_defaults_follow_the_handler(app: streamq.App) -> None:
    from streamq.handlers import Executor

    @app.handler("sync")
    def sync(msg: Message) -> None: ...

    @app.handler("coro")
    async def coro(msg: Message) -> None: ...

    app.handler("proc", executor="processes")(module_level_handler)
    assert app.handlers[("svc", "sync")].executor is Executor.INLINE
    assert app.handlers[("svc", "coro")].executor is Executor.ASYNCIO
    assert app.handlers[("svc", "proc")].executor is Executor.PROCESSES


@pytest.mark.parametrize(
    ("is_async", "executor", "fragment"),
    [
        (True, "threads", "async handler is awaited"),
        (False, "asyncio", "needs an async def"),
        (False, "processes", "module-level function"),
        (False, "gpu", "is not one of"),
    ],
)
def test_executor_that_cannot_serve_the_handler(
    app: streamq.App, is_async: bool, executor: str, fragment: str
) -> None:
    if is_async:

        async def handler(msg: Message) -> None: ...
    else:

        def handler(msg: Message) -> None: ...

    with pytest.raises(ConfigError, match=fragment):
        app.handler("t", executor=executor)(handler)  # type: ignore[arg-type]
