"""OpenTelemetry tracing (``pip install 'streamq[otel]'``, then ``tracing=True``).

The trace follows the record, carried in W3C ``traceparent``/``tracestate`` headers:

- ``Producer.send`` starts a PRODUCER span "<topic> publish" and injects its context into
  the record's headers (unless the caller set ``traceparent`` already).
- The worker runs each handler call (each attempt, each batch) in a CONSUMER span
  "<topic> process" whose parent is the context found in the record's headers; a batch
  span links to every record's context instead. A failing attempt records its exception.
- A dead-lettered record gets a PRODUCER span "<dlq topic> publish" in the same trace. The
  DLQ copy keeps the original headers byte for byte, so it already carries the producer's
  ``traceparent``; a record that arrived without one gets the dead-letter span's.

Spans go wherever the application's tracer provider sends them; streamq configures no
exporter. With tracing off (the default) none of this is imported or run. Handlers with
``executor="processes"`` are not traced inside the pool process.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .handlers import HandlerSpec
    from .message import Headers, Message

__all__ = ["Tracer", "tracer"]

TRACE_HEADERS = ("traceparent", "tracestate")


class _HeaderGetter:
    """Reads a context from streamq's (name, bytes) header pairs."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k.lower() == key and v is not None]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


class Tracer:
    """The OpenTelemetry calls streamq makes, resolved once."""

    def __init__(self) -> None:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.trace import Link, SpanKind
        except ImportError:
            raise ConfigError(
                "tracing=True needs OpenTelemetry: pip install 'streamq[otel]'"
            ) from None
        self._trace = trace
        self._propagate = propagate
        self._getter = _HeaderGetter()
        self._kind = SpanKind
        self._link = Link
        self._tracer = trace.get_tracer("streamq")

    def context_of(self, headers: Sequence[tuple[str, bytes]] | None) -> Any:
        return self._propagate.extract(headers or [], getter=self._getter)  # type: ignore[arg-type]

    def inject(self, headers: Headers) -> Headers:
        """``headers`` plus the current context's trace headers (kept if already there)."""
        if any(k.lower() == "traceparent" for k, _ in headers):
            return headers
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        return [*headers, *((k, v.encode()) for k, v in carrier.items())]

    @contextmanager
    def publishing(self, topic: str, parent: Any = None) -> Iterator[Any]:
        attributes = {"messaging.operation.type": "send", "messaging.destination.name": topic}
        with self._tracer.start_as_current_span(
            f"{topic} publish", context=parent, kind=self._kind.PRODUCER, attributes=attributes
        ) as span:
            yield span

    def traced(self, spec: HandlerSpec) -> HandlerSpec:
        """``spec`` with an invoke that runs each call in a CONSUMER span."""
        invoke = spec.invoke
        name = f"{spec.topic} process"
        start = self._tracer.start_as_current_span
        consumer = self._kind.CONSUMER
        context_of = self.context_of
        group = spec.group

        def attributes(msg: Message) -> dict[str, Any]:
            return {
                "messaging.system": "streamq",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.topic,
                "messaging.destination.partition.id": str(msg.partition),
                "messaging.consumer.group.name": group,
                "messaging.kafka.offset": msg.offset,
                "streamq.handler": spec.name,
                "streamq.attempt": msg.attempt,
            }

        def span_for(arg: Any) -> Any:
            if spec.batch:
                links = [
                    self._link(self._trace.get_current_span(context_of(m.raw_headers)).get_span_context())
                    for m in arg[:128]
                ]  # fmt: skip
                return start(name, kind=consumer, links=links,
                             attributes={"messaging.batch.message_count": len(arg),
                                         "streamq.handler": spec.name})  # fmt: skip
            return start(
                name, context=context_of(arg.raw_headers), kind=consumer, attributes=attributes(arg)
            )

        wrapped: Callable[[Any], Any]
        if spec.is_async:

            async def traced_async(arg: Any) -> Any:
                with span_for(arg):
                    return await invoke(arg)

            wrapped = traced_async
        else:

            def traced_sync(arg: Any) -> Any:
                with span_for(arg):
                    return invoke(arg)

            wrapped = traced_sync
        return dataclasses.replace(spec, invoke=wrapped)


@functools.cache
def tracer() -> Tracer:
    return Tracer()
