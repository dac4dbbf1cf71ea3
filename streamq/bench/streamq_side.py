"""The streamq side: an app with one handler doing the same work as the raw loop.

``build_app`` registers the ``--handler`` with the chosen executor and ordering. The module
also holds what other processes import by name: the ``--executor processes`` handlers (pool
processes import them) and ``app`` (``streamq.bench.streamq_side:app``, which each spawned
worker of ``--workers N`` imports to build its own app).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..message import Message
from ..pipeline import Out
from .spec import BenchSpec, parse_handler
from .tally import Tally
from .workloads import BenchRecord, _burn, derive, work_fn


def build_app(spec: BenchSpec, slot: int | None, *, local: bool = False) -> Any:
    """The streamq app doing the same work: one handler with the chosen options.

    ``slot`` None is the supervisor of ``--workers N``: it only needs the app to exist.
    ``local``: the monitor runs in this process and reads the handler's count itself.
    """
    import streamq

    kind, sleep_s = parse_handler(spec.handler)
    tick: Callable[[int], None] = _no_tick
    # a plain inline handler counts in its own local (_counting_handler), as does a sync
    # transform (_transform_handler)
    plain = not (spec.batch or spec.transform) and spec.executor == "inline" and kind != "sleep"
    own_count = spec.transform and spec.executor != "asyncio"
    if slot is not None:
        tally = Tally(spec.shm, slot, local=local)
        _tallies.append(tally)
        if not (spec.batch or plain or own_count):
            tick = tally.counter()
    options: dict[str, Any] = {"ordering": spec.ordering, "dlq": False}
    if spec.batch:
        options["batch"] = True
        options["max_batch"] = spec.max_poll_records
    if spec.concurrency is not None:
        options["concurrency"] = spec.concurrency
    if spec.group_type == "share":
        options["group_type"] = "share"
    if spec.executor in ("threads", "processes") or spec.ordering == "none":
        options["executor"] = spec.executor  # ordering="none" would pick threads for def
    if spec.dedup != "none":
        options["dedup"] = spec.dedup
    app = streamq.App(
        spec.group,
        broker=spec.broker,
        max_poll_records=spec.max_poll_records,
        poll_timeout=0.1,
        guarantee=spec.guarantee,
        **spec.extra,
    )
    handlers = [app.handler(t, **options) for t in spec.topics]

    def register(fn: Callable[..., Any]) -> None:
        for h in handlers:
            h(fn)

    if spec.transform:
        register(
            _transform_handler(spec, kind, tick, tally if own_count and slot is not None else None)
        )
    elif spec.batch:
        register(_batch_handler(kind, tally.batch_counter() if slot is not None else _no_count))
    elif spec.executor == "processes":
        register(_POOL_HANDLERS[kind])
    elif spec.executor == "asyncio":
        if kind == "sleep":

            async def handle_async(msg: Message) -> None:
                await asyncio.sleep(sleep_s)
                tick(msg.timestamp)
        else:
            work = work_fn(kind, 0.0)

            async def handle_async(msg: Message) -> None:
                work(msg.value)
                tick(msg.timestamp)

        register(handle_async)
    elif plain and slot is not None:
        register(_counting_handler(kind, tally))
    elif kind == "noop":

        def handle_noop(msg: Message) -> None:
            tick(msg.timestamp)

        register(handle_noop)
    elif kind == "json":

        def handle_json(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            tick(msg.timestamp)

        register(handle_json)
    elif kind == "pydantic":

        def handle_model(value: BenchRecord, msg: Message) -> None:
            tick(msg.timestamp)

        register(handle_model)
    elif kind == "cpu":

        def handle_cpu(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            _burn()
            tick(msg.timestamp)

        register(handle_cpu)
    else:

        def handle_sleep(msg: Message) -> None:
            time.sleep(sleep_s)
            tick(msg.timestamp)

        register(handle_sleep)
    return app


def _counting_handler(kind: str, tally: Tally) -> Callable[..., None]:
    """An inline handler counting in a local, as a user's would: no call per record for it.

    The raw loop's work has no Python frame (orjson's C function); a handler is one frame,
    which streamq cannot avoid, and a ``tick`` call would be a second. ``tally.watch``
    publishes ``count`` and switches ``sampling`` on from its thread.
    """
    stamp_first, sample = tally.stamp_first, tally.sample
    count = 0
    sampling = False
    if kind == "noop":

        def handle_noop(msg: Message) -> None:
            nonlocal count
            count += 1
            if count == 1:
                stamp_first()
            if sampling:
                sample((msg.timestamp,))

        handler: Callable[..., None] = handle_noop
    elif kind == "pydantic":

        def handle_model(value: BenchRecord, msg: Message) -> None:
            nonlocal count
            count += 1
            if count == 1:
                stamp_first()
            if sampling:
                sample((msg.timestamp,))

        handler = handle_model
    elif kind == "cpu":

        def handle_cpu(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            nonlocal count
            _burn()
            count += 1
            if count == 1:
                stamp_first()
            if sampling:
                sample((msg.timestamp,))

        handler = handle_cpu
    else:

        def handle_json(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            nonlocal count
            count += 1
            if count == 1:
                stamp_first()
            if sampling:
                sample((msg.timestamp,))

        handler = handle_json
    tally.watch(handler)
    return handler


def _transform_handler(
    spec: BenchSpec, kind: str, tick: Callable[[int], None], tally: Tally | None
) -> Any:
    """``--transform``: one ``Out`` per input, to the drain's own output topic, same key.

    With ``tally``, the handler counts in its own local (``_counting_handler``'s way).
    """
    topic, burn = spec.output_topic, kind == "cpu"
    if tally is not None:
        stamp_first, sample = tally.stamp_first, tally.sample
        count = 0
        sampling = False

        def transform_counting(value: dict, msg: Message) -> Out:  # type: ignore[type-arg]
            nonlocal count
            if burn:
                _burn()
            count += 1
            if count == 1:
                stamp_first()
            if sampling:
                sample((msg.timestamp,))
            return Out(topic, derive(value))

        tally.watch(transform_counting)
        return transform_counting
    if spec.executor == "asyncio":

        async def transform_async(value: dict, msg: Message) -> Out:  # type: ignore[type-arg]
            if burn:
                _burn()
            tick(msg.timestamp)
            return Out(topic, derive(value))

        return transform_async

    def transform(value: dict, msg: Message) -> Out:  # type: ignore[type-arg]
        if burn:
            _burn()
        tick(msg.timestamp)
        return Out(topic, derive(value))

    return transform


def _batch_handler(kind: str, count: Callable[[list[Message]], None]) -> Any:
    """``--batch``: one call per partition batch, the work per record, the count per batch."""
    if kind == "noop":

        def handle_batch_noop(batch: list[Message]) -> None:
            count(batch)

        return handle_batch_noop
    loads = orjson.loads

    def handle_batch_json(batch: list[Message]) -> None:
        for msg in batch:
            loads(msg.value)  # type: ignore[arg-type]
        count(batch)

    return handle_batch_json


def _no_count(batch: list[Message]) -> None:
    pass


def _no_tick(timestamp_ms: int) -> None:
    pass


# The tallies ``build_app`` opened in this process: their counting threads publish until
# closed, so a drain in this process (``memory://``) closes them before the next one.
_tallies: list[Tally] = []


def close_tallies() -> None:
    while _tallies:
        _tallies.pop().close()


# -- module-level handlers for --executor processes: pool processes import them by name -------

_pool_state: dict[str, Any] = {}


def _pool_tick(timestamp_ms: int) -> None:
    tick = _pool_state.get("tick")
    if tick is None:
        spec = BenchSpec(**json.loads(os.environ["STREAMQ_BENCH_SPEC"]))
        _pool_state["sleep"] = parse_handler(spec.handler)[1]
        tick = _pool_state["tick"] = Tally(spec.shm, None, spec.workers).counter()
    tick(timestamp_ms)


def pool_noop(msg: Message) -> None:
    _pool_tick(msg.timestamp)


def pool_json(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
    _pool_tick(msg.timestamp)


def pool_pydantic(value: BenchRecord, msg: Message) -> None:
    _pool_tick(msg.timestamp)


def pool_cpu(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
    _burn()
    _pool_tick(msg.timestamp)


def pool_sleep(msg: Message) -> None:
    _pool_tick(msg.timestamp)  # first: it reads the sleep time
    time.sleep(_pool_state["sleep"])


_POOL_HANDLERS: dict[str, Callable[..., None]] = {
    "noop": pool_noop,
    "json": pool_json,
    "pydantic": pool_pydantic,
    "cpu": pool_cpu,
    "sleep": pool_sleep,
}


def __getattr__(name: str) -> Any:
    """``app`` for ``--workers N``: each spawned worker builds its own app.

    The supervisor names it ``streamq.bench.streamq_side:app`` (where ``build_app`` made it).
    """
    if name != "app":
        raise AttributeError(name)
    spec = BenchSpec(**json.loads(os.environ["STREAMQ_BENCH_SPEC"]))
    index = os.environ.get("STREAMQ_WORKER_INDEX")
    app = build_app(spec, None if index is None else int(index))
    globals()["app"] = app
    return app
