"""XADD for every producer of a process, pipelined by one writer thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ...errors import BrokerError, BrokerUnavailable
from ...message import Headers
from ...pipeline import Output
from ..base import Delivered, ProducerBackend, RecordMetadata
from .entries import entry_fields, id_to_offset
from .errors import UNAVAILABLE

if TYPE_CHECKING:
    from .config import RedisBroker

__all__ = ["RedisProducer"]

MAX_TRIP = 1000  # entries per pipeline
MAX_PENDING = 20_000  # entries queued for the writer before senders wait (about 4 MB)


class RedisProducer(ProducerBackend):
    """XADD through a background thread that pipelines what accumulated since its last trip.

    Senders append to a deque (atomic, no lock: it runs per record) and wake the writer only
    if it sleeps; the writer takes up to ``MAX_TRIP`` entries per pipeline. Past
    ``MAX_PENDING`` queued entries senders wait for it.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r = broker.client()
        # (stream, fields, a future or a publish callback, the topic or the output)
        self._pending: deque[tuple[str, dict[str, bytes], Any, Any]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()  # flush() waits on it for the writer to catch up
        self._writing = 0  # entries the writer took from _pending and has not written yet
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="streamq-redis-producer",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        stream = self._broker.stream_for(self._r, topic, key, partition)
        fields = entry_fields(value, key, headers, timestamp)
        fut: Future[RecordMetadata] = Future()
        self._pending.append((stream, fields, fut, topic))
        if not self._wake.is_set():
            self._wake.set()
        if len(self._pending) > MAX_PENDING:
            self._wait_for_room()
        return fut

    def publish(self, outputs: Sequence[Output], delivered: Delivered) -> None:
        """The writer thread reports each XADD's answer to ``delivered`` (no futures).

        An output whose stream cannot be looked up while Redis is down (a topic's first
        output) is reported refused, as a failed XADD is, and the outbox publishes it again.
        A partition the topic does not have raises, before anything is queued.
        """
        stream_for, r = self._broker.stream_for, self._r
        items = []
        for out in outputs:
            try:
                stream = stream_for(r, out.topic, out.key, out.partition)
            except BrokerUnavailable as exc:
                delivered(exc, out)
                continue
            items.append((stream, entry_fields(out.value, out.key, out.headers), delivered, out))
        self._pending.extend(items)  # one C call: a trip takes all of them or none yet
        if not self._wake.is_set():
            self._wake.set()
        if len(self._pending) > MAX_PENDING:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Back-pressure, as librdkafka's full queue gives.

        Senders faster than the writer wait until it has written down to half the bound,
        instead of growing the queue (and the process) without end.
        """
        if threading.current_thread() is self._thread:
            return  # a future's callback sending again: the writer cannot wait for itself
        with self._idle:
            while len(self._pending) > MAX_PENDING // 2 and not self._closed:
                self._idle.wait(0.05)

    def _serve(self) -> None:
        pending, wake, idle = self._pending, self._wake, self._idle
        while True:
            wake.wait()
            wake.clear()  # before taking: an append after this wakes the next round
            while pending:
                self._writing = 1  # set before taking: flush() sees each entry somewhere
                batch: list[Any] = []
                take = pending.popleft
                try:
                    while len(batch) < MAX_TRIP:
                        batch.append(take())
                except IndexError:
                    pass
                self._writing = len(batch)
                self._write(batch)
                with idle:
                    self._writing = 0
                    idle.notify_all()
            if self._closed:  # close() flushed first: what came before it is written
                return

    def _write(self, batch: list[Any]) -> None:
        """One pipeline for the batch; every future gets its own answer, whatever happens.

        The writer thread must outlive any error: a future never resolved would leave its
        sender (a DLQ write holding a partition, say) waiting forever.
        """
        maxlen = self._broker.settings.redis_maxlen
        try:
            pipe = self._r.pipeline(transaction=False)
            for key, fields, _, _ in batch:
                pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
            answers = pipe.execute(raise_on_error=False)
        except Exception as exc:
            kind = BrokerUnavailable if isinstance(exc, UNAVAILABLE) else BrokerError
            for _, _, sink, topic in batch:
                _refused(sink, topic, kind(f"redis: XADD: {exc}"))
            return
        for (key, _, sink, topic), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):  # this stream only: WRONGTYPE, OOM, ...
                _refused(sink, topic, BrokerError(f"redis: XADD to {key}: {answer}"))
            elif isinstance(sink, Future):
                partition = int(key.rpartition(":")[2])
                sink.set_result(RecordMetadata(topic, partition, id_to_offset(answer)))
            else:
                sink(None, None)

    def flush(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending or self._writing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                # the writer notifies after each trip; the timeout covers an append it has
                # not woken for yet (its wake is an Event, not this condition)
                self._idle.wait(0.05 if remaining is None else min(remaining, 0.05))
            return len(self._pending) + self._writing

    def close(self) -> None:
        if not self._closed:
            self.flush(30)
            self._closed = True
            self._wake.set()
            self._thread.join(5)
            self._r.close()


def _refused(sink: Any, item: Any, exc: BaseException) -> None:
    """A future (``send``) gets the error; a ``publish`` callback gets it with its record."""
    if isinstance(sink, Future):
        sink.set_exception(exc)
    else:
        sink(exc, item)
