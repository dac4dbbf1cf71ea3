"""Dead-letter records: the original bytes, plus headers that say where and why.

A DLQ record keeps the original key, value and headers byte for byte, so it can be replayed
as it was, and appends ``streamq-*`` provenance headers. The traceback is cut to a cap so the
record still fits the broker's size limit; its tail is kept, since the raise site is there.
"""

from __future__ import annotations

import time
import traceback

from .credentials import scrub
from .message import Headers, Message

__all__ = ["DLQ_HEADERS", "attempt_of", "dead_letter_record"]

H_TOPIC = "streamq-original-topic"
H_PARTITION = "streamq-original-partition"
H_OFFSET = "streamq-original-offset"
H_TIMESTAMP = "streamq-original-timestamp"
H_GROUP = "streamq-consumer-group"
H_HANDLER = "streamq-handler"
H_ATTEMPTS = "streamq-attempts"
H_ERROR_TYPE = "streamq-error-type"
H_ERROR_MESSAGE = "streamq-error-message"
H_TRACEBACK = "streamq-traceback"
H_FAILED_AT = "streamq-failed-at"
# retry="later": the attempt a copy is for, and where its first delivery was (topic:p:offset)
H_ATTEMPT = "streamq-attempt"
H_RETRY_OF = "streamq-retry-of"

DLQ_HEADERS = (
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_TIMESTAMP,
    H_GROUP,
    H_HANDLER,
    H_ATTEMPTS,
    H_ERROR_TYPE,
    H_ERROR_MESSAGE,
    H_TRACEBACK,
    H_FAILED_AT,
)

_MESSAGE_LIMIT = 2048


def dead_letter_record(
    msg: Message,
    exc: BaseException,
    *,
    group: str,
    handler: str,
    traceback_limit: int,
) -> tuple[bytes | None, bytes | None, Headers]:
    """(key, value, headers) of the DLQ copy of ``msg``, which failed with ``exc``."""
    error_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    # An exception's text can carry a connection URL or a secret a handler held: scrubbed.
    # Each piece is capped before the whole is: a 300 KB exception message would otherwise
    # fill the kept tail and push out every frame, the raise site included.
    tb = scrub(
        "".join(_cut_text(piece, _MESSAGE_LIMIT) for piece in traceback.format_exception(exc))
    ).encode(errors="replace")
    headers: Headers = [(k, v) for k, v in msg.raw_headers or () if k != H_ATTEMPT]
    headers += [
        (H_TOPIC, msg.topic.encode()),
        (H_PARTITION, str(msg.partition).encode()),
        (H_OFFSET, str(msg.offset).encode()),
        (H_TIMESTAMP, str(msg.timestamp).encode()),
        (H_GROUP, group.encode()),
        (H_HANDLER, handler.encode()),
        (H_ATTEMPTS, str(msg.attempt).encode()),
        (H_ERROR_TYPE, error_type.encode()),
        (H_ERROR_MESSAGE, _cut_head(scrub(str(exc)).encode(errors="replace"), _MESSAGE_LIMIT)),
        (H_TRACEBACK, _cut_tail(tb, traceback_limit)),
        (H_FAILED_AT, str(time.time_ns() // 1_000_000).encode()),
    ]
    return msg.key, msg.value, headers


def attempt_of(msg: Message) -> int:
    """The attempt a record is (a retry-later copy says so in a header; else 1)."""
    for name, value in msg.raw_headers or ():
        if name == H_ATTEMPT:
            try:
                return max(1, int(value))
            except ValueError:
                break
    return 1


def _cut_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 16]}...[truncated]\n"


def _cut_head(data: bytes, limit: int) -> bytes:
    return data if len(data) <= limit else data[: limit - 16] + b"...[truncated]"


def _cut_tail(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    marker = f"[{len(data) - limit} bytes truncated]...\n".encode()
    return marker + data[len(data) - limit + len(marker) :]
