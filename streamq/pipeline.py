"""Handlers that produce: ``Out`` records, and what a handler's result turns into.

A handler returns or yields ``Out(topic, value, key=None, headers=None)`` records (one, a
list, a generator) or None. They are encoded in the handler's own call, so a value that
cannot be encoded fails that call like any other error (retried, then dead-lettered, and a
dead-lettered input publishes none of its outputs). The runtime ties the encoded records to
the input they came from (``streamq.runtime.outbox``): the commit never passes an input before
its outputs are acknowledged (at least once) or committed with it (exactly once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from ._native import native
from .codec import encode_headers, encode_key, encode_value
from .delays import due_ms
from .errors import ConfigError
from .message import Headers

__all__ = ["Out", "Output", "outputs_of"]


class Out(NamedTuple):
    """One record a handler produces.

    Args:
        topic: Where it goes.
        value: bytes as they are; str as UTF-8; dict, list or a pydantic model as JSON
            (orjson); None for a tombstone.
        key: Partitioning key (bytes, str or int); None keeps the input's key, so per-key
            order carries through a chain of stages. Batch handlers have no single input:
            their outputs without a key have none.
        headers: Header names to bytes (or str), or (name, bytes) pairs.
        delay: Seconds (or a ``timedelta``) before the record reaches ``topic``: it waits
            in the delay topic (``streamq.delays``) until then, with the same guarantee as
            any output.
    """

    topic: str
    value: Any
    key: bytes | str | int | None = None
    headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None = None
    delay: float | timedelta | None = None


class Output(NamedTuple):
    """An ``Out`` encoded for the broker: what the outbox holds and a producer sends.

    ``due`` (ms since the epoch): a delayed record, which the outbox sends to the delay topic
    instead (``streamq.delays.envelope``); ``partition``: an explicit one.
    """

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers | None
    partition: int | None = None
    due: int | None = None


_new = tuple.__new__


def outputs_of(
    result: Any, input_key: bytes | None, allowed: frozenset[str] | None = None
) -> list[Output]:
    """Encode what a handler returned; raises TypeError or ConfigError for anything else.

    Called inside the handler's call, so a generator's body runs here and its errors are the
    handler's. ``allowed``: the handler's declared ``outputs``.
    """
    if result is None:
        return []
    if isinstance(result, Out):
        return [_encode(result, input_key, allowed)]
    if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        raise TypeError(_bad_result(result))
    out = []
    for item in result:
        if not isinstance(item, Out):
            raise TypeError(_bad_result(item, inside=True))
        out.append(_encode(item, input_key, allowed))
    return out


_outputs_of_py = outputs_of

if native is not None and not TYPE_CHECKING:  # per record: ~450 ns here, ~220 compiled
    native.bind_outputs(Out, Output, orjson.dumps, _outputs_of_py)
    outputs_of = native.outputs_of


def _encode(out: Out, input_key: bytes | None, allowed: frozenset[str] | None) -> Output:
    topic, value, key, headers, delay = out
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"Out.topic: must be a non-empty string, got {topic!r}")
    if allowed is not None and topic not in allowed:
        raise ConfigError(
            f"Out.topic: {topic!r} is not among the handler's outputs "
            f"({', '.join(sorted(allowed))})"
        )
    key = input_key if key is None else encode_key(key)
    data = encode_value(value)
    if headers is not None:
        headers = encode_headers(headers)
    # tuple.__new__: the NamedTuple's own __new__ is a Python call with defaults, per record
    if delay is None:
        return _new(Output, (topic, data, key, headers, None, None))
    return _new(Output, (topic, data, key, headers, None, due_ms(delay, None, data)))


def _bad_result(value: Any, *, inside: bool = False) -> str:
    what = type(value).__name__
    where = f"a result holding a {what}" if inside else f"a {what}"
    return (
        f"the handler returned {where}; a handler returns None or streamq.Out records (one, "
        "a list of them, or a generator of them)"
    )
