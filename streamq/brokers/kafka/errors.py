"""confluent-kafka's errors translated at the boundary, and the client's own log lines.

Every call into the client that can fail goes through ``translate``: above this package only
streamq's error tree (``streamq.errors``) is seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...errors import BrokerError, BrokerUnavailable, UnknownTopicOrPartition
from ...logs import get_logger
from ..base import wait_until_reachable
from .client import KafkaError, KafkaException

__all__ = [
    "DISCONNECTED",
    "FENCED",
    "client_log",
    "error_log",
    "on_error",
    "translate",
    "wait_for_broker",
]

# A commit refused with these: the group replaced this member for good.
FENCED = {KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID}
_UNAVAILABLE = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT_QUEUE,
}
# Errors after which readiness reports the broker unreachable (a single dropped connection,
# _TRANSPORT, is routine: librdkafka reconnects).
DISCONNECTED = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
_UNKNOWN = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}


def translate(exc: BaseException, what: str) -> BrokerError:
    """Map a confluent-kafka error onto streamq's error tree."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    text = err.str() if err is not None else str(exc)
    code = err.code() if err is not None else None
    if code in _UNAVAILABLE:
        return BrokerUnavailable(f"{what}: {text}")
    if code in _UNKNOWN:
        return UnknownTopicOrPartition(f"{what}: {text}")
    return BrokerError(f"{what}: {text}")


class _SharedConfigNoise(logging.Filter):
    """Drop librdkafka's notes that a shared setting does not apply to this client.

    One passthrough dict feeds consumers and producers, so those notes are expected.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("property and will be ignored by this" in text and "CONFWARN" in text)


# librdkafka's lines all come through one format string, so the shared per-call-site limit
# (streamq.logs) bounds the whole client at 5 lines per 10 s during an outage.
client_log = get_logger("streamq.librdkafka")
client_log.addFilter(_SharedConfigNoise())
error_log = get_logger("streamq.kafka.errors")


def on_error(err: KafkaError) -> None:
    level = logging.ERROR if err.fatal() else logging.WARNING
    error_log.log(level, "kafka client error: %s", err.str())


def wait_for_broker(probe: Callable[[float], object], where: str, deadline_s: float) -> None:
    wait_until_reachable(
        probe, broker="Kafka", where=where, deadline_s=deadline_s, errors=(KafkaException,),
        describe=lambda exc: translate(exc, "metadata"),
    )  # fmt: skip
