"""The record type handed to handlers, and partition coordinates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ._native import native
from ._types import Headers, TopicPartition

__all__ = ["Headers", "Message", "TopicPartition"]


class Message:
    """One record, as a handler sees it.

    Backends build one per record on the hot path, so construction only stores references:
    nothing is decoded or copied until asked (``.headers``, ``.json()``).

    Attributes:
        topic: The topic (or, on Redis, the logical topic of the partition stream).
        partition: Partition number.
        offset: Kafka offset; on Redis a monotonic sequence derived from the stream ID.
        key: Raw key bytes, or None.
        value: Raw payload bytes, or None for a tombstone.
        timestamp: Milliseconds since the epoch, as the broker recorded it.
        attempt: 1 on first delivery to the handler, incremented by each in-place retry.
        raw_headers: Headers as (name, bytes) pairs in broker order, duplicates kept.
    """

    __slots__ = (
        "_headers",
        "attempt",
        "key",
        "offset",
        "partition",
        "raw_headers",
        "timestamp",
        "topic",
        "value",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        raw_headers: Headers | None = None,
        timestamp: int = -1,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.raw_headers = raw_headers
        self.timestamp = timestamp
        self.attempt = 1
        self._headers: dict[str, bytes] | None = None

    @property
    def headers(self) -> dict[str, bytes]:
        """Headers as a dict; with duplicate names the last one wins (see ``raw_headers``)."""
        if self._headers is None:
            self._headers = dict(self.raw_headers) if self.raw_headers else {}
        return self._headers

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def json(self) -> Any:
        """Decode the payload with orjson (no validation)."""
        if self.value is None:
            raise ValueError("tombstone record: value is None")
        return orjson.loads(self.value)

    def __repr__(self) -> str:
        return (
            f"Message({self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, value={_preview(self.value)}, attempt={self.attempt})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Process-pool executors ship records to other processes; the attempt travels too.
        return (_rebuild, (self.topic, self.partition, self.offset, self.key, self.value,
                           self.raw_headers, self.timestamp, self.attempt))  # fmt: skip


def _rebuild(*args: Any) -> Message:
    m = _MessagePy(*args[:7])
    m.attempt = args[7]
    return m


def _preview(value: bytes | None, limit: int = 60) -> str:
    if value is None:
        return "None"
    return repr(value[:limit] + b"..." if len(value) > limit else value)


# The twin above is what type checkers see; at run time the compiled class replaces it when
# the core is built (``streamq._native``). Both have the same attributes and behaviour.
_MessagePy = Message
if native is not None and not TYPE_CHECKING:
    Message = native.Message
