"""Handler registration: options validated and the signature inspected once, eagerly.

The result is a ``HandlerSpec`` with an ``invoke(msg)`` closure specialised to the signature,
so the hot path never inspects, branches on options, or builds keyword dicts per record.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .codec import make_decoder
from .dedup import GuardedStore, KeyFn, coordinates, make_store
from .dispatch import (
    SHAPE_MESSAGE,
    SHAPE_MSG_PAYLOAD,
    SHAPE_PAYLOAD,
    SHAPE_PAYLOAD_MSG,
    make_invoker,
)
from .errors import ConfigError
from .message import Message
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .pipeline import Output

__all__ = ["CommitMode", "Executor", "HandlerSpec", "Ordering", "build_spec", "retry_topic_of"]


class Ordering(StrEnum):
    """What a handler's records are ordered by."""

    PARTITION = "partition"
    """One record at a time per partition, in log order."""

    KEY = "key"
    """Per key lane inside a partition: different keys run in parallel, each key in order."""

    NONE = "none"
    """No order: up to ``concurrency`` records of the worker run at once, from any partition,
    each committed when every record before it is done too (the commit never passes an
    unfinished one)."""


class GroupType(StrEnum):
    """What kind of consumer group reads a handler's topic."""

    CLASSIC = "classic"
    """Each partition read by one member at a time, committed by position."""

    SHARE = "share"
    """Queue mode: every member reads every partition, each record acknowledged on its own
    (Kafka 4.2+ share groups, KIP-932; Redis competing consumers). Implies no order."""


class Executor(StrEnum):
    """Where a handler runs."""

    INLINE = "inline"
    """Sync handlers, on the worker's event loop: cheapest per record, for fast handlers."""

    THREADS = "threads"
    """Sync handlers in a thread pool (``Settings.threads``): blocking I/O in parallel lanes."""

    ASYNCIO = "asyncio"
    """Async handlers, awaited on the event loop: many lanes waiting on I/O at once."""

    PROCESSES = "processes"
    """Sync module-level handlers in a process pool (``Settings.processes``): CPU-bound work
    on every core, each lane's records still in order, shipped in chunks."""


class CommitMode(StrEnum):
    """When a record's offset is committed relative to its handler."""

    AFTER = "after"
    """After the handler finished (or the record was dead-lettered): at-least-once."""

    BEFORE = "before"
    """Before the handler starts: at-most-once, a crash loses the in-flight records."""


Invoke = Callable[[Any], Any]
# Where a handler's encoded outputs go, with the input they came from (the last of a batch).
Sink = Callable[[Message, "list[Output]"], None]


@dataclass(frozen=True)
class HandlerSpec:
    """Everything the worker needs to run one handler, fixed at registration."""

    topic: str
    group: str
    name: str
    fn: Callable[..., Any]
    invoke: Invoke
    is_async: bool
    batch: bool
    max_batch: int
    ordering: Ordering
    retry: RetryPolicy
    dlq: bool | str
    dlq_topic: str | None
    commit: CommitMode
    executor: Executor = Executor.INLINE
    # ordering="none": handler calls of this spec running at once in one worker
    concurrency: int = 1
    group_type: GroupType = GroupType.CLASSIC
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None
    dlq_limit: int | None = None
    dedup: GuardedStore | None = None
    dedup_key: KeyFn = coordinates
    # A handler that may return or yield ``streamq.Out`` records: one whose return annotation
    # is not None. The runtime then binds ``invoke`` per lane to its outbox, and ``sink``
    # takes outputs a pool process sent back (``streamq.runtime.outbox``).
    produces: bool = False
    sink: Sink | None = None
    outputs: frozenset[str] | None = None  # declared output topics; None: any
    # retry="later": where a failed record's copy comes back (``retry_topic_of``), read by
    # this same handler; None: retries in place
    retry_topic: str | None = None

    @property
    def merges_keys(self) -> bool:
        """``ordering="key"`` with a sync inline handler: a partition's keys share one lane.

        Inline handlers never overlap, so a lane per key only matters while one of its
        records waits (a retry's backoff, a DLQ write); the key then moves to a lane of its
        own until it catches up (``streamq.runtime.loop``). One lane per partition otherwise
        saves a unit, a task and a report per key and batch: 0.35x -> 0.66x of the raw loop
        with 1,000 keys on Kafka.
        """
        return (
            self.ordering is Ordering.KEY
            and self.executor is Executor.INLINE
            and not (self.batch or self.is_async)
        )

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` earns retries; the rest are dead-lettered at once."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.dont_retry_on)


# The flat names' defaults, which are RetryPolicy's: a handler given ``retry=`` keeps them.
_DEFAULT_RETRY = (
    RetryPolicy.max_retries,
    RetryPolicy.backoff,
    RetryPolicy.backoff_max,
    RetryPolicy.jitter,
)


def build_spec(
    fn: Callable[..., Any],
    *,
    topic: str,
    group: str,
    batch: bool,
    max_batch: int,
    ordering: str | None,
    max_retries: int,
    retry_backoff: float,
    retry_backoff_max: float,
    retry_jitter: bool,
    dlq: bool | str,
    retry: RetryPolicy | str | None = None,
    dedup: Any,
    commit: str,
    dlq_suffix: str,
    retry_on: Any = (Exception,),
    dont_retry_on: Any = (),
    timeout: float | None = None,
    dlq_limit: int | None = None,
    dedup_key: KeyFn | None = None,
    dedup_max_keys: int = 100_000,
    dedup_ttl: float = 7 * 86400.0,
    redis_password: str | None = None,
    executor: str | None = None,
    outputs: Any = None,
    concurrency: int | None = None,
    group_type: str = "classic",
) -> HandlerSpec:
    name = getattr(fn, "__qualname__", repr(fn))
    problems: list[str] = []
    if not isinstance(topic, str) or not topic:
        problems.append("topic: must be a non-empty string")
    if not isinstance(group, str) or not group:
        problems.append("group: must be a non-empty string")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        problems.append("max_batch: must be an integer >= 1")
    group_type_v = enum_choice(GroupType, group_type, "group_type", problems)
    shared = group_type_v is GroupType.SHARE
    ordering_v = enum_choice(Ordering, ordering or ("none" if shared else "partition"),
                             "ordering", problems)  # fmt: skip
    if shared and ordering_v not in (None, Ordering.NONE):
        problems.append(
            f"ordering={ordering!r}: a share group hands the records of one partition to "
            "many members, so there is no order to keep; leave ordering out (or 'none')"
        )
    if shared and commit == "before":
        problems.append("commit='before': a share group acknowledges each record after it "
                        "is handled (at-most-once needs a classic group)")  # fmt: skip
    commit_v = enum_choice(CommitMode, commit, "commit", problems)
    if not isinstance(dlq, bool) and not (isinstance(dlq, str) and dlq):
        problems.append("dlq: must be True, False or a topic name")
    if isinstance(dlq, str) and dlq == topic:
        problems.append("dlq: must differ from the topic it protects")
    store: GuardedStore | None = None
    try:
        store = make_store(
            dedup, namespace=group, max_keys=dedup_max_keys, ttl=dedup_ttl,
            redis_password=redis_password,
        )  # fmt: skip
    except ConfigError as exc:
        problems.extend(exc.problems)
    if dedup_key is not None and not callable(dedup_key):
        problems.append("dedup_key: must be a callable taking a streamq.Message")
    retry_on_v = _exception_types(retry_on, "retry_on", problems)
    dont_retry_on_v = _exception_types(dont_retry_on, "dont_retry_on", problems)
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
    ):
        problems.append("timeout: must be seconds > 0, or None")
    if dlq_limit is not None and (
        not isinstance(dlq_limit, int) or isinstance(dlq_limit, bool) or dlq_limit < 1
    ):
        problems.append("dlq_limit: must be an integer >= 1, or None")
    outputs_v: frozenset[str] | None = None
    if outputs is not None:
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        if not names or not all(isinstance(t, str) and t for t in names):
            problems.append("outputs: must be a list of topic names")
        else:
            outputs_v = frozenset(names)
    flat = (max_retries, retry_backoff, retry_backoff_max, bool(retry_jitter))
    later = retry == "later"
    if retry in ("in_place", "later"):
        retry = None
        if batch and later:
            problems.append("retry='later': batch handlers retry in place (a batch has no "
                            "single record to send back)")  # fmt: skip
    if retry is None:
        try:
            retry = RetryPolicy(*flat)
        except ConfigError as exc:
            problems.extend(exc.problems)
    elif not isinstance(retry, RetryPolicy):
        problems.append(
            f"retry: must be 'in_place', 'later' or a streamq.RetryPolicy, got {retry!r}"
        )
        retry = None
    elif flat != _DEFAULT_RETRY:
        problems.append(
            "retry: give retry=RetryPolicy(...) or the flat max_retries, retry_backoff, "
            "retry_backoff_max and retry_jitter, not both"
        )
    invoke: Invoke | None = None
    is_async = False
    try:
        invoke, is_async = build_invoker(fn, batch=batch)
    except ConfigError as exc:
        problems.extend(exc.problems)
    unordered = ordering_v is Ordering.NONE
    if executor is None and unordered and invoke is not None and not is_async:
        executor = "threads"  # a sync handler on the event loop would run one at a time
    executor_v = _executor(fn, executor, is_async, invoke is not None, problems)
    concurrency_v = _concurrency(concurrency, unordered, problems)
    if (
        timeout is not None
        and invoke is not None
        and not is_async
        and executor_v is not Executor.PROCESSES
    ):
        problems.append(
            "timeout: needs an async handler or executor='processes'; a sync handler in "
            "this process cannot be interrupted (make it async, or drop timeout)"
        )
    if problems:
        raise ConfigError([f"handler {name!r} for topic {topic!r}: {p}" for p in problems])
    assert invoke is not None and retry is not None
    if timeout is not None and is_async:  # processes: the pool process is killed instead
        invoke = _with_timeout(invoke, float(timeout))
    assert ordering_v is not None and commit_v is not None
    dlq_topic = None if dlq is False else (topic + dlq_suffix if dlq is True else str(dlq))
    return HandlerSpec(
        topic=topic,
        group=group,
        name=name,
        fn=fn,
        invoke=invoke,
        is_async=is_async,
        batch=batch,
        max_batch=max_batch,
        ordering=ordering_v,
        retry=retry,
        dlq=dlq,
        dlq_topic=dlq_topic,
        commit=commit_v,
        executor=executor_v,
        concurrency=concurrency_v,
        group_type=group_type_v or GroupType.CLASSIC,
        retry_on=retry_on_v,
        dont_retry_on=dont_retry_on_v,
        timeout=timeout,
        dlq_limit=dlq_limit,
        dedup=store,
        dedup_key=dedup_key or coordinates,
        produces=may_produce(fn),
        outputs=outputs_v,
        retry_topic=retry_topic_of(topic, group) if later else None,
    )


# ordering="none" without a concurrency: as many at once as the default thread pool runs
DEFAULT_CONCURRENCY = 32


def _concurrency(value: int | None, unordered: bool, problems: list[str]) -> int:
    if value is None:
        return DEFAULT_CONCURRENCY if unordered else 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
        problems.append(f"concurrency: must be an integer from 1 to 4096, got {value!r}")
        return 1
    if not unordered and value != 1:
        problems.append(
            "concurrency: needs ordering='none' (records of a partition, or of a key, run one "
            "at a time to keep their order; ordering='key' runs different keys in parallel)"
        )
        return 1
    return value


def retry_topic_of(topic: str, group: str) -> str:
    """Where a ``retry="later"`` handler of ``group`` on ``topic`` reads its retries from.

    One per group: every group reading ``topic`` handles (and retries) its records alone.
    """
    return f"{topic}.{group}.retry"


def _executor(
    fn: Callable[..., Any], value: str | None, is_async: bool, known: bool, problems: list[str]
) -> Executor:
    default = Executor.ASYNCIO if is_async else Executor.INLINE
    if value is None:
        return default
    chosen: Executor | None = enum_choice(Executor, value, "executor", problems)
    if chosen is None or not known:
        return default
    if is_async and chosen is not Executor.ASYNCIO:
        problems.append(
            f"executor: {value!r} runs sync handlers; an async handler is awaited on the event "
            "loop (executor='asyncio', the default for async def)"
        )
    elif not is_async and chosen is Executor.ASYNCIO:
        problems.append(
            "executor: 'asyncio' needs an async def handler; for blocking sync code use "
            "executor='threads'"
        )
    elif chosen is Executor.PROCESSES:
        qualname = getattr(fn, "__qualname__", "")
        module = getattr(fn, "__module__", None)
        if not module or "<locals>" in qualname or "<lambda>" in qualname:
            problems.append(
                "executor: 'processes' sends the handler to other processes by name, so it "
                "must be a module-level function (this one is defined inside a function)"
            )
    return chosen


def _exception_types(value: Any, key: str, problems: list[str]) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    bad = [i for i in items if not (isinstance(i, type) and issubclass(i, BaseException))]
    if bad:
        problems.append(f"{key}: expected exception classes, got {bad!r}")
        return ()
    return tuple(items)


def _with_timeout(invoke: Invoke, seconds: float) -> Invoke:
    """Cancel an async handler after ``seconds``.

    The TimeoutError then follows the retry and DLQ policy like any other failure.
    """

    async def timed(arg: Any) -> Any:
        return await asyncio.wait_for(invoke(arg), seconds)

    return timed


def enum_choice(cls: type[Any], value: Any, key: str, problems: list[str]) -> Any:
    """``cls(value)``, or None with the problem noted (every problem is reported at once)."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        problems.append(f"{key}: {value!r} is not one of {allowed}")
        return None


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def may_produce(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` may return or yield ``Out`` records: unless it says it returns None.

    Handlers that say ``-> None`` (most, and every benchmark's) pay nothing for pipelines;
    for the others the runtime looks at what each call returned.
    """
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations were reported by build_invoker already
        return True
    return hints.get("return", Any) is not type(None)


def build_invoker(fn: Callable[..., Any], *, batch: bool) -> tuple[Invoke, bool]:
    """Map the handler's parameters to (payload, message) once; return the call closure.

    An async generator's closure collects what it yields, so it is awaited like any async
    handler.
    """
    invoke, is_async = _build_invoker(fn, batch=batch)
    if inspect.isasyncgenfunction(fn):
        generate = invoke

        async def collected(arg: Any) -> list[Any]:
            return [out async for out in generate(arg)]

        return collected, True
    return invoke, is_async


def _build_invoker(fn: Callable[..., Any], *, batch: bool) -> tuple[Invoke, bool]:
    if not callable(fn):
        raise ConfigError(f"{fn!r} is not callable")
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"cannot inspect the signature: {exc}") from None
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p for p in params if p.default is p.empty]
    if batch:
        return _batch_invoker(fn, required, hints), _is_async(fn)
    msg_param: inspect.Parameter | None = None
    payload_param: inspect.Parameter | None = None
    problems = []
    for p in params:
        hint = hints.get(p.name, p.empty)
        if hint is Message:
            if msg_param is not None:
                problems.append(
                    f"parameter {p.name!r}: only one parameter may take streamq.Message"
                )
            msg_param = p
        elif p.default is not p.empty:
            continue  # optional extras are left to their defaults
        elif hint is p.empty:
            problems.append(
                f"parameter {p.name!r} has no annotation: annotate it with a pydantic model "
                "(or any type pydantic accepts) for the payload, or with streamq.Message"
            )
        elif payload_param is not None:
            problems.append(
                f"parameter {p.name!r}: a second payload parameter (already "
                f"{payload_param.name!r}); a handler takes one payload and optionally one "
                "streamq.Message"
            )
        else:
            payload_param = p
    if msg_param is None and payload_param is None and not problems:
        problems.append("takes no parameters: it must accept the payload or a streamq.Message")
    if problems:
        raise ConfigError(problems)
    decode = None
    if payload_param is not None:
        try:
            decode = make_decoder(hints[payload_param.name])
        except Exception as exc:
            raise ConfigError(
                f"parameter {payload_param.name!r}: pydantic cannot validate "
                f"{hints[payload_param.name]!r} ({exc})"
            ) from None
    return _specialise(fn, params, msg_param, payload_param, decode), _is_async(fn)


def _specialise(
    fn: Callable[..., Any],
    params: list[inspect.Parameter],
    msg_param: inspect.Parameter | None,
    payload_param: inspect.Parameter | None,
    decode: Callable[[bytes | None], Any] | None,
) -> Invoke:
    """A closure per signature shape, so no per-record branching or kwargs dicts."""
    used = [p for p in params if p is msg_param or p is payload_param]
    positional = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in used)
    contiguous = used == params[: len(used)]
    if decode is None:
        assert msg_param is not None
        if positional and contiguous:
            return make_invoker(fn, None, SHAPE_MESSAGE)
        mname = msg_param.name
        return lambda m: fn(**{mname: m})
    if msg_param is None:
        assert payload_param is not None
        if positional and contiguous:
            return make_invoker(fn, decode, SHAPE_PAYLOAD)
        pname = payload_param.name
        return lambda m: fn(**{pname: decode(m.value)})
    assert payload_param is not None
    if positional and contiguous:
        shape = SHAPE_PAYLOAD_MSG if used[0] is payload_param else SHAPE_MSG_PAYLOAD
        return make_invoker(fn, decode, shape)
    pname, mname = payload_param.name, msg_param.name
    return lambda m: fn(**{pname: decode(m.value), mname: m})


def _batch_invoker(
    fn: Callable[..., Any], required: list[inspect.Parameter], hints: dict[str, Any]
) -> Invoke:
    if len(required) != 1:
        names = ", ".join(repr(p.name) for p in required) or "none"
        raise ConfigError(
            f"batch=True handlers take exactly one required parameter, list[streamq.Message];"
            f" required parameters: {names}"
        )
    p = required[0]
    hint = hints.get(p.name, p.empty)
    origin = typing.get_origin(hint)
    if origin not in (list, Sequence) or typing.get_args(hint) != (Message,):
        raise ConfigError(
            f"parameter {p.name!r}: batch=True handlers receive list[streamq.Message]; "
            f"annotate it so (got {hint!r})"
            if hint is not p.empty
            else f"parameter {p.name!r}: annotate it list[streamq.Message] (batch=True)"
        )
    if p.kind == p.KEYWORD_ONLY:
        name = p.name
        return lambda batch: fn(**{name: batch})
    return fn
