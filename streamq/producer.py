"""``Producer``: send records to any broker URL, with the same partitioner everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from .brokers import connect
from .brokers.base import RecordMetadata
from .codec import encode_headers, encode_key, encode_value
from .delays import due_ms, ensure_delay_topic, envelope
from .errors import ConfigError
from .pipeline import Output
from .settings import load_settings
from .tracing import tracer

__all__ = ["Producer"]


class Producer:
    """Sends records; keyed records go to Kafka's murmur2 partition on every broker.

    Args:
        url: Broker URL; defaults to ``STREAMQ_BROKER`` or ``memory://default``.
        **settings: Client settings, as for ``App`` (for example ``kafka={...}``).

    ``send`` returns a future that resolves to ``RecordMetadata`` once the broker acknowledged
    the record; ``flush`` waits for all of them. Use it as a context manager to flush on exit.
    """

    def __init__(self, url: str | None = None, **settings: Any) -> None:
        if url is not None:
            settings["broker"] = url
        resolved = load_settings(**settings)
        self.url = resolved.broker
        self._settings = resolved
        self._broker = connect(self.url, resolved)
        self._backend = self._broker.producer()
        self._delay_topic = resolved.delay_topic
        self._delay_topic_ready = False
        self._closed = False
        self._tracer = tracer() if resolved.tracing else None

    def send(
        self,
        topic: str,
        value: Any,
        key: bytes | str | int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
        *,
        delay: float | timedelta | None = None,
        deliver_at: datetime | None = None,
    ) -> Future[RecordMetadata]:
        """Queue one record.

        Args:
            topic: Destination topic.
            value: bytes as they are; str as UTF-8; dict, list or a pydantic model as JSON
                (orjson); None for a tombstone.
            key: Partitioning key (str and int are UTF-8 encoded).
            headers: Header names to bytes (or str, UTF-8 encoded).
            partition: Explicit partition, bypassing the partitioner.
            timestamp: Milliseconds since the epoch; default now.
            delay: Seconds (or a ``timedelta``) before the record reaches ``topic``; until
                then it waits in the delay topic (``Settings.delay_topic``), which the
                workers of any app on this broker move from (``streamq.delays``). The
                future then names where it waits.
            deliver_at: The same as a time (aware; naive means local time). A delayed
                record's ``partition`` is checked when it is moved (a missing one holds it
                back, said in an error line), and its ``timestamp`` is the move's.

        Raises:
            ConfigError: The value, key, topic or timestamp cannot be sent.
            UnknownTopicOrPartition: ``partition`` does not exist.
        """
        if self._closed:
            raise ConfigError("producer is closed")
        if not isinstance(topic, str) or not topic:
            raise ConfigError("topic: must be a non-empty string")
        if timestamp is not None and (type(timestamp) is bool or not isinstance(timestamp, int)):
            # every broker keeps an integer; refused here rather than by the consumer
            raise ConfigError(
                f"timestamp: an int of milliseconds since the epoch, not {timestamp!r}"
            )
        if delay is not None or deliver_at is not None:
            return self._send_delayed(topic, value, key, headers, partition, delay, deliver_at)
        if self._tracer is not None:
            encoded_value, encoded_key = encode_value(value), encode_key(key)
            return self._tracer.publish(  # type: ignore[no-any-return]
                topic,
                encode_headers(headers) or [],
                lambda traced: self._backend.send(
                    topic, encoded_value, encoded_key, traced, partition, timestamp
                ),
            )
        return self._backend.send(
            topic,
            encode_value(value),
            encode_key(key),
            encode_headers(headers),
            partition,
            timestamp,
        )

    def _send_delayed(
        self,
        topic: str,
        value: Any,
        key: bytes | str | int | None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None,
        partition: int | None,
        delay: float | timedelta | None,
        deliver_at: datetime | None,
    ) -> Future[RecordMetadata]:
        encoded = encode_value(value)
        due = due_ms(delay, deliver_at, encoded)
        out = Output(topic, encoded, encode_key(key), encode_headers(headers), partition, due)
        wrapped = envelope(out, self._delay_topic)
        if not self._delay_topic_ready:
            ensure_delay_topic(self._broker, self._settings)
            self._delay_topic_ready = True
        return self._backend.send(wrapped.topic, wrapped.value, wrapped.key, wrapped.headers)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for outstanding records; returns how many are still unacknowledged."""
        return self._backend.flush(timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend.flush(None)
            self._backend.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
