"""The idempotent Kafka producer, with futures for its delivery reports."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..._native import native
from ...message import Headers
from ...pipeline import Output
from ..base import Delivered, ProducerBackend, RecordMetadata
from .client import KafkaError, KafkaException, ck
from .errors import translate

if TYPE_CHECKING:
    from .config import KafkaBroker

__all__ = ["KafkaProducer"]


class KafkaProducer(ProducerBackend):
    """Idempotent producer whose futures resolve from delivery reports.

    A background thread serves delivery callbacks, so ``send(...).result()`` works from any
    thread and the worker's DLQ path can await the acknowledgement.
    """

    def __init__(self, broker: KafkaBroker) -> None:
        self._producer = ck.Producer(broker.producer_config())
        self._report: tuple[Delivered | None, Callable[[Any, Any], None]] = (None, print)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="streamq-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        fut: Future[RecordMetadata] = Future()

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                fut.set_exception(translate(KafkaException(err), f"delivery to {topic}"))
            else:
                fut.set_result(RecordMetadata(msg.topic(), msg.partition(), msg.offset()))

        kwargs: dict[str, Any] = {"on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return fut
            except BufferError:  # the local queue is full: wait for deliveries to free it
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise translate(exc, f"produce to {topic}") from None

    def publish(self, outputs: Sequence[Output], delivered: Delivered) -> None:
        """One delivery callback for every record published with the same ``delivered``."""
        last, report = self._report  # one tuple: read and replaced whole, from any thread
        if last is not delivered:
            report = _report(delivered)
            self._report = (delivered, report)
        produce_each(self._producer, outputs, report, delivered)

    def flush(self, timeout: float | None = None) -> int:
        return int(self._producer.flush(-1 if timeout is None else timeout))

    def close(self) -> None:
        if not self._closed.is_set():
            self._producer.flush(30)
            self._closed.set()
            self._thread.join(5)


def produce_each(
    client: Any,
    outputs: Sequence[Output],
    report: Callable[[Any, Any], None] | None = None,
    refused: Delivered | None = None,
) -> None:
    """Hand ``outputs`` to a confluent-kafka producer, waiting while its queue is full.

    ``report`` is each one's delivery callback (None: no report, as in a transaction). A
    record the client refuses at once goes to ``refused``; without one the error is raised.
    Positional arguments, and ``headers=`` only when there are some: each keyword costs the
    client a lookup, ``headers=None`` alone about 250 ns (it builds an empty list), per record.
    """
    produce = client.produce
    for out in outputs:
        topic, value, key, headers, partition, _ = out
        if partition is None:
            partition = -1  # RD_KAFKA_PARTITION_UA: the partitioner picks
        while True:
            try:
                if headers is None:
                    produce(topic, value, key, partition, report)
                else:
                    produce(topic, value, key, partition, report, headers=headers)
                break
            except BufferError:  # the local queue is full: wait for deliveries to free it
                client.poll(0.05)
            except KafkaException as exc:
                if refused is None:
                    raise
                refused(translate(exc, f"produce to {topic}"), out)
                break


def _report(delivered: Delivered) -> Callable[[Any, Any], None]:
    """The client's (error, message) as ``publish``'s (error, output).

    Called per output on the producer's thread: compiled, a success costs no Python frame.
    """

    def refuse(err: KafkaError, msg: Any) -> None:
        out = Output(msg.topic(), msg.value(), msg.key(), msg.headers())
        delivered(translate(KafkaException(err), f"delivery to {out.topic}"), out)

    return Relay(delivered, refuse)  # type: ignore[no-any-return]


class _RelayPy:
    """The compiled ``Relay``'s twin: ``(err, msg)`` to ``delivered`` or ``refuse``."""

    __slots__ = ("_delivered", "_refuse")

    def __init__(self, delivered: Delivered, refuse: Callable[[Any, Any], None]) -> None:
        self._delivered = delivered
        self._refuse = refuse

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self._delivered(None, None)
        else:
            self._refuse(err, msg)


Relay: Any = _RelayPy
if native is not None:
    Relay = native.Relay
