"""Delayed records: how one waits in the delay topic, and how it is found there again.

``Producer.send(..., delay=...)`` and ``Out(..., delay=...)`` do not send the record to its
topic: they send an *envelope* to the delay topic (``Settings.delay_topic``, default
``streamq.delays``, compacted on Kafka), keyed by a fresh id, with the target and the due
time in headers. The record's own key, value and headers travel unchanged. Members of the
group of the same name hold what they read until it is due, then publish it to its topic and
append a tombstone for its id in the same transaction as their commit
(``streamq.runtime.delays``), so every delayed record reaches its topic once, never before
it is due, on every broker.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .brokers.base import Broker
    from .message import Message
    from .pipeline import Output
    from .settings import Settings

__all__ = ["BARRIER", "DUE", "TARGET", "due_ms", "ensure_delay_topic", "envelope", "unwrap"]

TARGET = "streamq-delay-topic"
DUE = "streamq-delay-due"  # ms since the epoch
KEY = "streamq-delay-key"  # the record's own key; absent: it has none
PARTITION = "streamq-delay-partition"  # an explicit partition of the target
BARRIER = "streamq-delay-barrier"  # a mover's mark: it read all that came before (runtime)
_OURS = (TARGET, DUE, KEY, PARTITION)


def due_ms(
    delay: float | timedelta | None, deliver_at: datetime | None, value: bytes | None
) -> int:
    """When a delayed record is due, in ms since the epoch; ``ConfigError`` for bad input."""
    if delay is not None and deliver_at is not None:
        raise ConfigError("give delay= or deliver_at=, not both")
    if value is None:
        raise ConfigError("a tombstone (value None) cannot be delayed: the delay topic uses "
                          "tombstones itself")  # fmt: skip
    now = time.time()
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime):
            raise ConfigError(f"deliver_at: must be a datetime, got {type(deliver_at).__name__}")
        try:
            return round(deliver_at.timestamp() * 1000)  # naive: local time, as datetime says
        except (OverflowError, ValueError, OSError) as exc:
            raise ConfigError(f"deliver_at: {deliver_at!r} is no time ({exc})") from None
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if (isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay)
            or delay < 0):  # fmt: skip
        raise ConfigError(f"delay: must be seconds >= 0 or a timedelta, got {delay!r}")
    return round((now + delay) * 1000)


def envelope(out: Output, delay_topic: str) -> Output:
    """``out`` (with ``due`` set) as the record that waits for it in ``delay_topic``."""
    from .pipeline import Output

    headers = list(out.headers or ())
    headers.append((TARGET, out.topic.encode()))
    headers.append((DUE, str(out.due).encode()))
    if out.key is not None:
        headers.append((KEY, out.key))
    if out.partition is not None:
        headers.append((PARTITION, str(out.partition).encode()))
    return Output(delay_topic, out.value, os.urandom(12).hex().encode(), headers)


def unwrap(msg: Message) -> tuple[Output, int] | None:
    """The record ``msg`` holds and when it is due; None if ``msg`` is no envelope."""
    from .pipeline import Output

    found: dict[str, bytes] = {}
    rest = []
    for name, value in msg.raw_headers or ():
        if name in _OURS:
            found[name] = value
        else:
            rest.append((name, value))
    try:
        topic = found[TARGET].decode()
        due = int(found[DUE])
        partition = int(found[PARTITION]) if PARTITION in found else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return Output(topic, msg.value, found.get(KEY), rest or None, partition), due


def ensure_delay_topic(broker: Broker, settings: Settings) -> None:
    """Create the delay topic (compacted: the tombstones of moved records clean it) if needed."""
    from .brokers import ensure_topic

    ensure_topic(broker, settings.delay_topic, settings.delay_partitions, compact=True)
