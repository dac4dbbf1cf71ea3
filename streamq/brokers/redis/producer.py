"""XADD for every producer of a process, pipelined by one writer thread."""

from __future__ import annotations

import queue
import threading
import time
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


class RedisProducer(ProducerBackend):
    """XADD through a background thread that pipelines what accumulated since its last trip."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r = broker.client()
        # (stream, fields, a future or a publish callback, the topic or the output) or None
        self._queue: queue.Queue[tuple[str, dict[str, bytes], Any, Any] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._outstanding = 0
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
        with self._idle:
            self._outstanding += 1
        self._queue.put((stream, fields, fut, topic))
        return fut

    def publish(self, outputs: Sequence[Output], delivered: Delivered) -> None:
        """The writer thread reports each XADD's answer to ``delivered`` (no futures)."""
        items = []
        for out in outputs:
            stream = self._broker.stream_for(self._r, out.topic, out.key, out.partition)
            items.append((stream, entry_fields(out.value, out.key, out.headers), delivered, out))
        with self._idle:
            self._outstanding += len(items)
        put = self._queue.put
        for item in items:
            put(item)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[Any] = [first]
            stop = False
            while len(batch) < 1000:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # close() was called: write what came before it, then end
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            with self._idle:
                self._outstanding -= len(batch)
                self._idle.notify_all()
            if stop:
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
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            return self._outstanding

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush(30)
            self._queue.put(None)
            self._thread.join(5)
            self._r.close()


def _refused(sink: Any, item: Any, exc: BaseException) -> None:
    """A future (``send``) gets the error; a ``publish`` callback gets it with its record."""
    if isinstance(sink, Future):
        sink.set_exception(exc)
    else:
        sink(exc, item)
