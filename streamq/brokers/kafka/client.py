"""The confluent-kafka import, and the conversions between its types and streamq's.

Every module of this package imports the client through here: a missing extra fails once,
with the hint, and the compiled core binds to confluent-kafka's record layout once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...dispatch import bind_confluent
from ...errors import ConfigError
from ...message import Message, TopicPartition

try:
    import confluent_kafka as ck
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    if "confluent_kafka" not in str(exc):
        raise
    raise ImportError("streamq[kafka] is not installed: pip install 'streamq[kafka]'") from exc

__all__ = [
    "FIELD_READS",
    "AdminClient",
    "ConsumerGroupTopicPartitions",
    "KafkaError",
    "KafkaException",
    "NewTopic",
    "check_client_version",
    "ck",
    "from_ck",
    "to_ck",
    "to_message",
]

# The compiled core reads confluent-kafka's records by field when their layout is the one it
# knows (checked here, once); otherwise, and in the twin, through their methods.
FIELD_READS = bind_confluent(ck.Message)

MIN_LIBRDKAFKA = (2, 10, 0)


def check_client_version() -> None:
    version = ck.libversion()[0]
    parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    if parts < MIN_LIBRDKAFKA:
        raise ConfigError(
            f"confluent-kafka bundles librdkafka {version}; streamq needs >= 2.10 "
            "(older ones rewind offsets under cooperative-sticky): pip install -U confluent-kafka"
        )


def to_ck(tp: TopicPartition, offset: int | None = None) -> Any:
    if offset is None:
        return ck.TopicPartition(tp.topic, tp.partition)
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def from_ck(parts: Sequence[Any]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


def to_message(m: Any) -> Message:
    """A confluent record without error as a Message (the hot loop in poll_batch inlines it)."""
    return Message(
        m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]
    )
