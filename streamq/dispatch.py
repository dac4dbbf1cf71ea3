"""The dispatch core: split a polled batch into ordered units, and run inline handlers.

A unit is the records of one partition (``ordering="partition"``) or of one key lane inside a
partition (``ordering="key"``), in log order. At most one unit per partition or lane runs at a
time, which is what keeps order; different units run concurrently.

Every function here runs per record. Two implementations behave identically: the compiled
``streamq._dispatch`` (from ``ext/_dispatch.pyx``) and the pure-Python twins below; the
choice is made once, in ``streamq._native``. ``IMPLEMENTATION`` says which one runs, and the
tests run both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ._native import IMPLEMENTATION, NO_EXTENSIONS, native
from .errors import DecodeError, SchemaError
from .message import Message, TopicPartition

__all__ = [
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "Dispatcher",
    "DispatcherProtocol",
    "Lease",
    "bind_confluent",
    "call_each",
    "call_each_until",
    "coordinate_keys",
    "has_nonfinite",
    "json_decoder",
    "kafka_messages",
    "make_invoker",
    "redis_messages",
]


class DispatcherProtocol(Protocol):
    def split(self, batch: list[Message]) -> dict[TopicPartition, list[Message]]:
        """Group a batch by partition, keeping each partition's records in batch order."""

    def split_keys(self, msgs: list[Message], lanes: int) -> dict[int, list[Message]]:
        """Group one partition's records by key lane, keeping order within each lane."""

    def busiest_key_lane(self, msgs: list[Message], lanes: int) -> int:
        """How many records the key lane with the most of them has, without splitting."""


def _key_lane(key: bytes | None, lanes: int) -> int:
    """The one rule for which lane a key goes to: split_keys and busiest_key_lane agree."""
    return 0 if key is None else hash(key) % lanes


class _DispatcherPy:
    """The pure-Python twin of ``streamq._dispatch.Dispatcher``."""

    def split(self, batch: list[Message]) -> dict[TopicPartition, list[Message]]:
        out: dict[TopicPartition, list[Message]] = {}
        current: list[Message] = []
        topic: str | None = None
        partition = -1
        for m in batch:
            # Brokers return runs of one partition: look the list up only when the run changes.
            if m.partition != partition or m.topic != topic:
                topic = m.topic
                partition = m.partition
                tp = TopicPartition(topic, partition)
                found = out.get(tp)
                if found is None:
                    found = out[tp] = []
                current = found
            current.append(m)
        return out

    def split_keys(self, msgs: list[Message], lanes: int) -> dict[int, list[Message]]:
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        out: dict[int, list[Message]] = {}
        for m in msgs:
            lane = _key_lane(m.key, lanes)
            found = out.get(lane)
            if found is None:
                found = out[lane] = []
            found.append(m)
        return out

    def busiest_key_lane(self, msgs: list[Message], lanes: int) -> int:
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        counts = [0] * lanes
        for m in msgs:
            counts[_key_lane(m.key, lanes)] += 1
        return max(counts) if msgs else 0


def _call_each_py(
    invoke: Callable[[Any], Any], unit: list[Message], i: int, end: int, failed: list[BaseException]
) -> int:
    """Call ``invoke`` on ``unit[i:end]``; on an exception append it to ``failed`` and stop.

    Returns the index reached: ``end``, or the index of the record that raised.
    """
    end = min(end, len(unit))
    try:
        while i < end:
            invoke(unit[i])
            i += 1
    except BaseException as exc:
        failed.append(exc)
    return i


class _LeasePy:
    """Until when this member may start handlers of a partition (``streamq._dispatch.Lease``).

    Redis: the partition lease, renewed by the poll thread. Kafka: the member's liveness,
    renewed while the process runs, so a member frozen past its session starts nothing on
    waking until the group confirms it still owns its partitions.
    """

    __slots__ = ("deadline", "token")

    def __init__(self, token: Any = None, deadline: float = math.inf) -> None:
        self.token = token
        self.deadline = float(deadline)

    def __repr__(self) -> str:
        return f"Lease(token={self.token!r}, deadline={self.deadline!r})"


def _call_each_until_py(
    invoke: Callable[[Any], Any],
    unit: list[Message],
    i: int,
    end: int,
    failed: list[BaseException],
    lease: _LeasePy,
) -> int:
    """``call_each``, starting no record once the clock has passed ``lease.deadline``.

    Returns the index reached: ``end``, the record that raised, or the first not started.
    The deadline is read before every record: another thread may move it either way.
    """
    end = min(end, len(unit))
    clock = time.monotonic
    try:
        while i < end and clock() < lease.deadline:
            invoke(unit[i])
            i += 1
    except BaseException as exc:
        failed.append(exc)
    return i


def _coordinate_keys_py(unit: list[Message]) -> list[str]:
    """Dedup keys ``topic:partition:offset`` for a unit (``streamq.dedup.coordinates``)."""
    return [f"{m.topic}:{m.partition}:{m.offset}" for m in unit]


def _kafka_messages_py(raw: list[Any], on_error: Callable[[Any], None]) -> list[Message]:
    """confluent-kafka records to Messages; records carrying an error go to ``on_error``."""
    out: list[Message] = []
    append = out.append
    for m in raw:
        err = m.error()
        if err is not None:
            on_error(err)
            continue
        msg = Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())
        msg.timestamp = m.timestamp()[1]
        append(msg)
    return out


# Handler signatures ``make_invoker`` specialises (0: the handler takes the Message alone).
SHAPE_MESSAGE, SHAPE_PAYLOAD, SHAPE_PAYLOAD_MSG, SHAPE_MSG_PAYLOAD = 0, 1, 2, 3


def _make_invoker_py(
    fn: Callable[..., Any], decode: Callable[[Any], Any] | None, shape: int
) -> Callable[[Any], Any]:
    """The per-record call for a handler of one of the shapes above, as a closure."""
    if shape == SHAPE_MESSAGE:
        return fn
    assert decode is not None
    if shape == SHAPE_PAYLOAD:
        return lambda m: fn(decode(m.value))
    if shape == SHAPE_PAYLOAD_MSG:
        return lambda m: fn(decode(m.value), m)
    if shape == SHAPE_MSG_PAYLOAD:
        return lambda m: fn(m, decode(m.value))
    raise ValueError(f"unknown handler shape {shape}")


def _json_decoder_py(kind: type | None, describe: Callable[[Any], str]) -> Callable[[Any], Any]:
    """Parse with orjson, then check the kind: for payload types JSON guarantees (dict, Any)."""
    loads = orjson.loads

    def decode(value: bytes | None) -> Any:
        if value is None:
            raise DecodeError("null value (tombstone) where a payload was expected")
        try:
            obj = loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if kind is not None and type(obj) is not kind:
            raise SchemaError(describe(obj))
        return obj

    return decode


def _redis_messages_py(
    topic: str,
    partition: int,
    entries: list[Any],
    delivered: list[int],
    trimmed: list[Any],
    seq_bits: int,
    decode_headers: Callable[[Any], Any],
) -> list[Message]:
    """Redis stream entries ``(id, fields)`` to Messages (twin of the compiled loop).

    The offset is the entry ID ``ms-seq`` as ``ms << seq_bits | seq``; the timestamp is the
    producer's (field ``t``), else the ID's milliseconds. Entries whose fields are gone go
    to ``trimmed``; the offsets of the others to ``delivered``. ``fields`` is a dict or the
    reply's flat list ``[name, value, ...]`` (the last of a repeated name wins).
    """
    out: list[Message] = []
    for entry_id, fields in entries:
        if type(fields) is list:
            fields = dict(zip(fields[::2], fields[1::2], strict=False))
        if not fields:
            trimmed.append(entry_id)
            continue
        raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        ms_text, _, seq_text = raw.partition("-")
        if not ms_text.isdigit() or (seq_text and not seq_text.isdigit()):
            raise ValueError("not a stream entry ID")
        ms = int(ms_text)
        offset = (ms << seq_bits) | int(seq_text or 0)
        stamp = fields.get(b"t")
        blob = fields.get(b"h")
        msg = Message(topic, partition, offset, fields.get(b"k"), fields.get(b"v"))
        msg.raw_headers = decode_headers(blob) if blob else None
        msg.timestamp = int(stamp) if stamp is not None else ms
        out.append(msg)
        delivered.append(offset)
    return out


def _has_nonfinite_py(value: bytes) -> bool:
    """Whether ``NaN`` or ``Infinity`` occurs anywhere in the payload."""
    return b"NaN" in value or b"Infinity" in value


def _bind_confluent_py(message_type: type) -> bool:
    """The twin reads records through their methods only."""
    return False


Dispatcher: type[DispatcherProtocol] = _DispatcherPy
bind_confluent = _bind_confluent_py
call_each = _call_each_py
call_each_until = _call_each_until_py
Lease = _LeasePy
make_invoker = _make_invoker_py
redis_messages = _redis_messages_py
has_nonfinite = _has_nonfinite_py
json_decoder = _json_decoder_py
coordinate_keys = _coordinate_keys_py
kafka_messages = _kafka_messages_py

if native is not None and not TYPE_CHECKING:
    Dispatcher = native.Dispatcher
    bind_confluent = native.bind_confluent
    call_each = native.call_each
    call_each_until = native.call_each_until
    Lease = native.Lease
    make_invoker = native.make_invoker
    redis_messages = native.redis_messages
    has_nonfinite = native.has_nonfinite
    json_decoder = native.JsonDecoder
    coordinate_keys = native.coordinate_keys
    kafka_messages = native.kafka_messages
