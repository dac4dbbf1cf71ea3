"""Share groups' operator side without a broker: the wire codec, refusals, REJECT on DLQ.

The requests themselves are proven against Apache Kafka 4.2 in
tests/integration/test_queue_mode.py (``status``, ``lag`` and ``offsets reset``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from streamq.brokers.kafka.wire import ShareWire, _Reader, _Writer
from streamq.errors import BrokerUnavailable, ConfigError
from streamq.message import Message, TopicPartition


def test_flexible_encoding_round_trips() -> None:
    w = _Writer().uvarint(0).uvarint(127).uvarint(128).uvarint(300_000).string("grüppe")
    w.count(None).compact_array(["a", "bc"]).tags()
    r = _Reader(w.data)
    assert [r.uvarint() for _ in range(4)] == [0, 127, 128, 300_000]
    assert r.string() == "grüppe"
    assert r.nullable_string() is None
    assert [r.string() for _ in range(r.count())] == ["a", "bc"]
    r.tags()
    with pytest.raises(BrokerUnavailable, match="ended early"):
        r.int32()


def test_tagged_fields_are_skipped() -> None:
    w = _Writer().uvarint(2)  # two tagged fields: tag, size, bytes
    w.uvarint(0).uvarint(3)
    w.data += b"abc"
    w.uvarint(5).uvarint(1)
    w.data += b"z"
    w.int8(7)
    r = _Reader(w.data)
    r.tags()
    assert r._take(1) == b"\x07"


def test_a_sasl_listener_is_refused_with_the_command_that_answers() -> None:
    wire = ShareWire("127.0.0.1:9092", {"security.protocol": "SASL_SSL"}, 5.0)
    with pytest.raises(ConfigError, match=r"kafka-share-groups\.sh"):
        wire.describe("g")


def test_a_broker_that_does_not_answer_is_unavailable_not_a_crash() -> None:
    wire = ShareWire("127.0.0.1:1", {}, 1.0)  # nothing listens on port 1
    with pytest.raises(BrokerUnavailable):
        wire.describe("g")


class _Acks:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int, Any]] = []

    def acknowledge_offset(self, topic: str, partition: int, offset: int, kind: Any) -> None:
        self.sent.append((topic, partition, offset, kind))


def test_a_dead_lettered_record_is_rejected_the_others_accepted() -> None:
    from streamq.brokers.kafka.client import ck
    from streamq.brokers.kafka.share import KafkaShareConsumer

    consumer: Any = KafkaShareConsumer.__new__(KafkaShareConsumer)
    tp = TopicPartition("jobs", 0)
    consumer._held = {tp: {10, 11, 12}}
    consumer._rejected = set()
    consumer._events = Counter()
    consumer._acks_since = 0.0
    consumer._consumer = acks = _Acks()
    msgs = [Message("jobs", 0, o, None, b"{}") for o in (10, 11, 12)]
    consumer.reject(msgs[1])
    consumer.acknowledge(tp, msgs)
    kinds = {offset: kind for _, _, offset, kind in acks.sent}
    assert kinds == {
        10: ck.AcknowledgeType.ACCEPT,
        11: ck.AcknowledgeType.REJECT,
        12: ck.AcknowledgeType.ACCEPT,
    }
    assert consumer._events == Counter(
        {("share_accepted", "jobs", "0"): 2, ("share_rejected", "jobs", "0"): 1}
    )
    assert not consumer._rejected and not consumer._held[tp]
    consumer.acknowledge(tp, msgs)  # acknowledged already: nothing sent twice
    assert len(acks.sent) == 3
