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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .handlers import HandlerSpec
    from .message import Headers

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
    """The OpenTelemetry calls streamq makes, resolved once.

    Spans are started and ended by hand rather than with ``start_as_current_span``: its
    layered context managers cost about 5 us per record even with no SDK installed, and
    attributes are built only for spans that record (a sampler may drop them).
    """

    def __init__(self) -> None:
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        except ImportError:
            raise ConfigError(
                "tracing=True needs OpenTelemetry: pip install 'streamq[otel]'"
            ) from None
        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._getter = _HeaderGetter()
        self._kind = SpanKind
        self._link = Link
        self._status = Status
        self._error = StatusCode.ERROR
        self._tracer = trace.get_tracer("streamq")
        self._root = context.Context()  # no headers: the record starts its own trace

    def context_of(self, headers: Sequence[tuple[str, bytes]] | None) -> Any:
        if not headers:
            return self._root
        return self._propagate.extract(headers, getter=self._getter)  # type: ignore[arg-type]

    def publish(
        self, topic: str, headers: Headers, send: Callable[[Headers], Any], parent: Any = None
    ) -> Any:
        """``send(headers)`` inside a PRODUCER span whose context the headers carry.

        A ``traceparent`` already in ``headers`` is kept (the caller's trace wins).
        """
        span = self._tracer.start_span(f"{topic} publish", context=parent, kind=self._kind.PRODUCER)
        try:
            if span.is_recording():
                span.set_attribute("messaging.operation.type", "send")
                span.set_attribute("messaging.destination.name", topic)
            if not any(k.lower() == "traceparent" for k, _ in headers):
                carrier: dict[str, str] = {}
                self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
                headers = [*headers, *((k, v.encode()) for k, v in carrier.items())]
            return send(headers)
        except BaseException as exc:
            self._failed(span, exc)
            raise
        finally:
            span.end()

    def _failed(self, span: Any, exc: BaseException) -> None:
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))

    def traced(self, spec: HandlerSpec) -> HandlerSpec:
        """``spec`` with an invoke that runs each call in a CONSUMER span."""
        invoke = spec.invoke
        name = f"{spec.topic} process"
        start_span = self._tracer.start_span
        consumer = self._kind.CONSUMER
        context_of = self.context_of
        in_context = self._trace.set_span_in_context
        attach, detach = self._context.attach, self._context.detach
        failed = self._failed
        group = spec.group

        def begin(arg: Any) -> Any:
            if spec.batch:
                contexts = (
                    self._trace.get_current_span(context_of(m.raw_headers)).get_span_context()
                    for m in arg[:128]
                )
                links = [self._link(c) for c in contexts if c.is_valid]  # untraced: no link
                span = start_span(name, context=self._root, kind=consumer, links=links)
                if span.is_recording():
                    span.set_attributes({"messaging.batch.message_count": len(arg),
                                         "streamq.handler": spec.name})  # fmt: skip
                return span
            span = start_span(name, context=context_of(arg.raw_headers), kind=consumer)
            if span.is_recording():
                span.set_attributes({
                    "messaging.system": "streamq",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": arg.topic,
                    "messaging.destination.partition.id": str(arg.partition),
                    "messaging.consumer.group.name": group,
                    "messaging.kafka.offset": arg.offset,
                    "streamq.handler": spec.name,
                    "streamq.attempt": arg.attempt,
                })  # fmt: skip
            return span

        wrapped: Callable[[Any], Any]
        if spec.is_async:

            async def traced_async(arg: Any) -> Any:
                span = begin(arg)
                token = attach(in_context(span))
                try:
                    return await invoke(arg)
                except BaseException as exc:
                    failed(span, exc)
                    raise
                finally:
                    detach(token)
                    span.end()

            wrapped = traced_async
        else:

            def traced_sync(arg: Any) -> Any:
                span = begin(arg)
                token = attach(in_context(span))
                try:
                    return invoke(arg)
                except BaseException as exc:
                    failed(span, exc)
                    raise
                finally:
                    detach(token)
                    span.end()

            wrapped = traced_sync
        return dataclasses.replace(spec, invoke=wrapped)


@functools.cache
def tracer() -> Tracer:
    return Tracer()
