"""Kafka client configuration: tuned defaults, passthrough, and refusals (no broker needed)."""

from __future__ import annotations

import pytest

from streamq import ConfigError
from streamq.brokers import connect
from streamq.brokers.kafka import KafkaBroker
from streamq.settings import load_settings


def broker(url: str = "kafka://h1:9092,h2:9092", **settings) -> KafkaBroker:
    b = connect(url, load_settings(broker=url, **settings))
    assert isinstance(b, KafkaBroker)
    return b


def test_consumer_defaults_keep_commit_after_processing() -> None:
    config = broker().consumer_config("billing")
    assert config["bootstrap.servers"] == "h1:9092,h2:9092"
    assert config["group.id"] == "billing"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["fetch.queue.backoff.ms"] == 10
    assert config["fetch.wait.max.ms"] == 100  # a resumed partition waits behind no long fetch
    assert config["queued.max.messages.kbytes"] == (64 << 20) // 4096  # a quarter of the cap


def test_producer_defaults_are_idempotent_with_javas_partitioner() -> None:
    config = broker().producer_config()
    assert config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"


def test_passthrough_from_url_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQ_KAFKA", '{"sasl.mechanism": "PLAIN", "session.timeout.ms": 7000}')
    b = broker("kafka://h:9092?security.protocol=SASL_SSL")
    config = b.consumer_config("g")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "PLAIN"
    assert config["session.timeout.ms"] == 7000  # the user's value beats streamq's default


def test_settings_that_break_the_guarantee_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        broker(kafka={"enable.auto.commit": True, "enable.auto.offset.store": "true",
                      "group.id": "x", "on_commit": "f"})  # fmt: skip
    text = str(info.value)
    assert "kafka.enable.auto.commit: refused" in text
    assert "kafka.enable.auto.offset.store: refused" in text
    assert "kafka.group.id: set by streamq" in text
    assert "kafka.on_commit: callbacks are owned by streamq" in text
    broker(kafka={"enable.auto.commit": False})  # saying "off" explicitly is fine


def test_max_poll_interval_must_cover_the_revoke_drain() -> None:
    with pytest.raises(ConfigError, match=r"too short for revoke_timeout=5\.0s"):
        broker(kafka={"max.poll.interval.ms": 6000}).consumer_config("g")
    broker(kafka={"max.poll.interval.ms": 6000}, revoke_timeout=3).consumer_config("g")


def test_static_membership_and_kip848_opt_in() -> None:
    config = broker(instance_id="billing-a", group_protocol="consumer").consumer_config("g")
    assert config["group.instance.id"] == "billing-a"
    assert config["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in config  # server-side assignment in KIP-848


def test_url_without_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no host"):
        broker("kafka://")


def test_kip848_refuses_settings_the_broker_owns() -> None:
    b = broker(group_protocol="consumer",
               kafka={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        b.consumer_config("g")
    text = str(info.value)
    assert "kafka.session.timeout.ms: not allowed with group_protocol='consumer'" in text
    assert "group.consumer.heartbeat.interval.ms" in text


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append(name)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # every assignment also resumes: librdkafka keeps a pause through a reassignment
        ({}, ["incremental_assign", "resume", "incremental_unassign", "incremental_unassign"]),
        (
            {"group_protocol": "consumer", "kafka": {}},
            ["incremental_assign", "resume"] + 2 * ["incremental_unassign"],
        ),
        (
            {"kafka": {"partition.assignment.strategy": "range"}},
            ["assign", "resume", "unassign", "unassign"],
        ),
    ],
    ids=["cooperative-sticky", "kip848", "eager"],
)
def test_rebalance_callbacks_assign_themselves(settings: dict, expected: list[str]) -> None:
    """Never the client's fallback: it can hang holding the GIL during a close (#4041)."""
    import confluent_kafka as ck

    b = broker("kafka://127.0.0.1:9", **settings)
    consumer = b.consumer("g", b.settings)
    try:
        fake, parts = _Recorder(), [ck.TopicPartition("t", 0)]
        consumer._assigned(fake, parts)
        consumer._revoked(fake, parts)
        consumer._lost(fake, parts)
        assert fake.calls == expected
    finally:
        consumer.close()


def test_a_failed_asynchronous_commit_goes_back_to_the_tracker() -> None:
    """An async commit that failed used to stay marked committed: idle never re-sent it."""
    from confluent_kafka import KafkaError
    from confluent_kafka import TopicPartition as CkTopicPartition

    from streamq.brokers import connect
    from streamq.message import Message, TopicPartition
    from streamq.offsets import OffsetTracker
    from streamq.settings import load_settings

    url = "kafka://127.0.0.1:9"
    settings = load_settings(broker=url)
    backend = connect(url, settings).consumer("g", settings)
    backend._on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [CkTopicPartition("t", 0, 3)])
    failed = backend.take_failed_commits()
    assert failed == {TopicPartition("t", 0): 3}
    assert backend.take_failed_commits() == {}

    tracker = OffsetTracker()
    tp = TopicPartition("t", 0)
    epoch = tracker.assign(tp)
    msgs = [Message("t", 0, o, None, b"{}") for o in range(3)]
    tracker.track(tp, msgs)
    tracker.complete(tp, epoch, msgs)
    tracker.mark_committed(tracker.dirty_positions())
    assert tracker.dirty_positions() == {}
    tracker.mark_uncommitted(failed)
    assert tracker.dirty_positions() == {tp: 3}
