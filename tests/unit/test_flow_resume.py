"""Back-pressure resumes that restart fetching at once (no broker: the client is a recorder).

librdkafka does not wake a broker's thread on resume; with all of a broker's partitions
paused, fetching restarted up to a second later. The Kafka backend seeks each resumed
partition to the client's own position, which wakes it; the poll thread polls in short
steps while partitions wait to drain. The effect is a benchmark's (`streamq bench` with small
in-flight bounds); these tests hold the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamq.brokers import connect
from streamq.brokers.kafka import KafkaBroker
from streamq.brokers.kafka.client import KafkaError, KafkaException
from streamq.brokers.kafka.consumer import KafkaConsumer
from streamq.message import TopicPartition
from streamq.offsets import OffsetTracker
from streamq.runtime.flow import FlowControl
from streamq.settings import load_settings
from streamq.stats import Stats

A, B, C = (TopicPartition("orders", p) for p in range(3))


@dataclass
class Position:
    topic: str
    partition: int
    offset: int
    error: Any = None


class Client:
    """What the backend asks of confluent-kafka's Consumer on a resume, recorded."""

    def __init__(self, positions: dict[int, Position], fail_resume: bool = False) -> None:
        self.positions = positions
        self.fail_resume = fail_resume
        self.calls: list[tuple[str, Any]] = []

    def resume(self, parts: list[Any]) -> None:
        if self.fail_resume:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.calls.append(("resume", sorted(p.partition for p in parts)))

    def position(self, parts: list[Any]) -> list[Position]:
        return [self.positions[p.partition] for p in parts]

    def seek(self, pos: Position) -> None:
        self.calls.append(("seek", (pos.partition, pos.offset)))


def consumer(client: Client) -> KafkaConsumer:
    url = "kafka://127.0.0.1:9"  # never reached: the client below replaces the real one
    broker = connect(url, load_settings(broker=url))
    assert isinstance(broker, KafkaBroker)
    backend = KafkaConsumer(broker, "billing")
    backend._consumer.close()
    backend._consumer = client
    return backend


def test_a_resume_seeks_each_partition_to_the_clients_own_position() -> None:
    client = Client(
        {
            0: Position("orders", 0, 120),
            1: Position("orders", 1, -1001),  # never consumed: the client looks it up itself
            2: Position("orders", 2, 7, error=KafkaError(KafkaError._STATE)),
        }
    )
    consumer(client).resume([A, B, C])
    assert client.calls == [("resume", [0, 1, 2]), ("seek", (0, 120))]


def test_a_resume_that_failed_seeks_nothing() -> None:
    client = Client({0: Position("orders", 0, 5)}, fail_resume=True)
    consumer(client).resume([A])
    assert client.calls == []


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[TopicPartition]]] = []

    def pause(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("pause", list(tps)))

    def resume(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("resume", list(tps)))


def flow() -> FlowControl:
    tracker = OffsetTracker()
    for tp in (A, B):
        tracker.assign(tp)
    labels: dict[TopicPartition, Any] = {A: ("g", "orders", "0", ""), B: ("g", "orders", "1", "")}
    stats = Stats()
    return FlowControl("g", Backend(), tracker, load_settings(), stats, labels)  # type: ignore[arg-type]


def test_draining_means_paused_for_back_pressure_not_halted_or_held() -> None:
    f = flow()
    assert not f.draining()
    f.pause([A])
    assert f.draining()  # waits for its work to drain: polls come in short steps
    f.halt(A)
    assert not f.draining()  # halted: waits for a reassignment, not for a drain
    f.pause([B])
    f.hold({B})
    assert not f.draining()  # held: waits for the broker to take an output
