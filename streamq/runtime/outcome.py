"""What happens to a record whose handler raised: the failure path every executor shares.

A failed record is retried in place (the lane waits, so order holds), then dead-lettered
once its DLQ write is acknowledged; batch handlers retry the whole batch, then each member
alone. Process-critical errors are never poison: the lane halts uncommitted and the worker
stops. Every path returns how the lane goes on, so the executors only count what finished.

Executors hand in how they call the handler once (``Call``), so the retries run wherever
the first attempt ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from .. import failpoints
from ..brokers.base import Backend, ProducerBackend
from ..delays import envelope
from ..dlq import H_ATTEMPT, H_RETRY_OF, attempt_of, dead_letter_record
from ..errors import PoisonMessage, Reject
from ..handlers import HandlerSpec
from ..logs import about, get_logger
from ..message import Headers, Message
from ..pipeline import Output
from ..retry import NEVER_POISON
from ..settings import Settings
from ..stats import Stats
from ..tracing import Tracer
from .lanes import Lane

__all__ = ["Call", "Outcomes"]

log = get_logger("streamq.worker")

# One call of the handler with a record (or a batch), wherever its executor runs it.
Call = Callable[[HandlerSpec, Any], Awaitable[None]]


class Outcomes:
    """Retry, batch fallback, critical errors and dead-lettering for one group's lanes."""

    def __init__(
        self,
        group: str,
        producer: ProducerBackend,
        stats: Stats,
        on_critical: Callable[[BaseException], None],
        tracer: Tracer | None,
        settings: Settings,
        backend: Backend,
    ) -> None:
        self._group = group
        self.at = backend.offset_text  # offsets in log lines as the broker's users know them
        # a share group's member rejects a dead-lettered record instead of accepting it
        self._rejects = backend.reject if backend.share else None
        # exactly once: the DLQ record (or a retry's copy) is an output of its input,
        # committed with its offset
        self._transactional_dlq = settings.guarantee == "exactly_once"
        self._delay_topic = settings.delay_topic
        self._producer = producer
        self._stats = stats
        self._on_critical = on_critical
        self._tracer = tracer
        self._traceback_limit = settings.traceback_limit

    async def recover(
        self, lane: Lane, msg: Message, exc: BaseException, index: int, call: Call
    ) -> bool:
        """Retry ``msg`` (``unit[index]``) in place, then dead-letter it.

        Returns False when the lane must halt at this record.
        """
        spec = lane.spec
        self._stats.failed_by[lane.labels] += 1
        if self.is_critical(lane, msg, exc):
            return False
        if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
            if spec.retry_topic is not None:
                msg.attempt = attempt_of(msg)
            return await self.dead_letter(lane, msg, exc, index)
        if spec.retry_topic is not None:
            return await self.retry_later(lane, msg, exc, index, spec.retry_topic)
        policy = spec.retry
        for retry in range(1, policy.max_retries + 1):
            delay = policy.delay(retry)
            log.warning(
                "handler %s failed on %s[%d]@%s (attempt %d of %d): %s: %s; retrying in %.2fs",
                spec.name, msg.topic, msg.partition, self.at(msg.offset), msg.attempt,
                policy.max_retries + 1, type(exc).__name__, exc, delay,
                extra=about(spec.name, msg, self._group),
            )  # fmt: skip
            if not await self.sleep(lane, delay) or not await self.await_lease(lane):
                return False
            self._stats.retried_by[lane.labels] += 1
            msg.attempt = retry + 1
            try:
                await call(spec, msg)
                return True
            except BaseException as again:
                exc = again
                self._stats.failed_by[lane.labels] += 1
                if self.is_critical(lane, msg, exc):
                    return False
                if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
                    break
        return await self.dead_letter(lane, msg, exc, index)

    async def retry_later(
        self, lane: Lane, msg: Message, exc: BaseException, index: int, retry_topic: str
    ) -> bool:
        """``retry="later"``: a copy of ``msg`` waits in the delay topic, the lane moves on.

        The copy goes to the handler's retry topic (``<topic>.<group>.retry``, which the same
        handler reads) with its attempt count and where it first came from in headers. It
        is sent and acknowledged (or, exactly once, committed with the input) before the
        commit passes ``msg``, as a DLQ record is; past ``max_retries`` the record goes to
        the DLQ with every header, so the DLQ names both coordinates.
        """
        spec = lane.spec
        attempt = msg.attempt = attempt_of(msg)
        if attempt > spec.retry.max_retries:
            return await self.dead_letter(lane, msg, exc, index)
        delay = spec.retry.delay(attempt)
        headers = [(k, v) for k, v in msg.raw_headers or () if k != H_ATTEMPT]
        headers.append((H_ATTEMPT, str(attempt + 1).encode()))
        if not any(k == H_RETRY_OF for k, _ in headers):
            headers.append((H_RETRY_OF, f"{msg.topic}:{msg.partition}:{msg.offset}".encode()))
        due = time.time_ns() // 1_000_000 + round(delay * 1000)
        copy = Output(retry_topic, msg.value, msg.key, headers, None, due)
        log.warning(
            "handler %s failed on %s[%d]@%s (attempt %d of %d): %s: %s; retrying later, in "
            "%.2fs, through %s; the partition goes on",
            spec.name, msg.topic, msg.partition, self.at(msg.offset), attempt,
            spec.retry.max_retries + 1, type(exc).__name__, exc, delay, retry_topic,
            extra=about(spec.name, msg, self._group),
        )  # fmt: skip
        self._stats.retried_by[lane.labels] += 1
        if self._transactional_dlq:
            assert spec.sink is not None  # every lane is bound to the outbox under exactly once
            spec.sink(msg, [copy])
            return True
        wrapped = envelope(copy, self._delay_topic)
        return await self._send_dead_letter(
            lane, wrapped.topic, msg, wrapped.key, wrapped.value, wrapped.headers or [],
            what="retry copy",
        )  # fmt: skip

    async def run_batch(
        self, lane: Lane, unit: list[Message], call: Call, failed: BaseException | None = None
    ) -> int:
        """Retry the whole batch; then try each member alone once and dead-letter the failures.

        ``failed``: the first attempt already ran elsewhere and raised that
        (``Lanes._run_batch_here``).
        """
        spec = lane.spec
        policy = spec.retry
        for attempt in range(1, policy.max_retries + 2):
            if failed is not None:
                exc, failed = failed, None
            else:
                if attempt > 1:
                    if not await self.sleep(lane, policy.delay(attempt - 1)):
                        return 0
                    self._stats.retried_by[lane.labels] += len(unit)
                    for m in unit:
                        m.attempt = attempt
                if not await self.await_lease(lane):
                    return 0
                try:
                    await call(spec, unit)
                    return len(unit)
                except BaseException as raised:
                    exc = raised
            self._stats.failed_by[lane.labels] += 1
            if self.is_critical(lane, unit[0], exc):
                return 0
            log.warning(
                "batch handler %s failed on %d records of %s[%d] from offset %s "
                "(attempt %d of %d): %s: %s",
                spec.name, len(unit), unit[0].topic, unit[0].partition,
                self.at(unit[0].offset),
                attempt, policy.max_retries + 1, type(exc).__name__, exc,
                extra=about(spec.name, unit[0], self._group),
            )  # fmt: skip
            if isinstance(exc, PoisonMessage | Reject) or not spec.retryable(exc):
                break
        for i, msg in enumerate(unit):
            if not await self.await_lease(lane):
                return i
            try:
                await call(spec, [msg])
            except BaseException as exc:
                if self.is_critical(lane, msg, exc) or not await self.dead_letter(
                    lane, msg, exc, i
                ):
                    return i
        return len(unit)

    def is_critical(self, lane: Lane, msg: Message, exc: BaseException) -> bool:
        """Process-critical errors are never poison: halt uncommitted and stop the worker."""
        if not isinstance(exc, NEVER_POISON):
            return False
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise exc  # our own cancellation (forced shutdown): let it unwind the lane
        log.critical(
            "handler %s raised %s on %s[%d]@%s: not dead-lettering a process-critical error; "
            "the partition stops uncommitted, the worker stops, and the record will be "
            "redelivered on restart",
            lane.spec.name, type(exc).__name__, msg.topic, msg.partition, self.at(msg.offset),
            extra=about(lane.spec.name, msg, self._group),
        )  # fmt: skip
        self._on_critical(exc)
        return True

    async def dead_letter(self, lane: Lane, msg: Message, exc: BaseException, index: int) -> bool:
        """Produce the DLQ copy and wait for its ack; only then may the commit pass it."""
        spec = lane.spec
        seq = lane.seq_base + index
        run = lane.dead_run + 1 if seq == lane.last_dead + 1 else 1
        if spec.dlq_limit is not None and run > spec.dlq_limit:
            log.error(
                "handler %s: %d records of %s[%d] in a row went to the DLQ (dlq_limit=%d); "
                "halting the partition at offset %s instead of dead-lettering more, which "
                "looks like a bad deploy rather than bad data",
                spec.name, run - 1, msg.topic, msg.partition, spec.dlq_limit,
                self.at(msg.offset),
                extra=about(spec.name, msg, self._group),
            )  # fmt: skip
            return False
        if spec.dlq_topic is None:
            log.error(
                "handler %s gave up on %s[%d]@%s (%s: %s) and dlq=False: partition %d halts "
                "here uncommitted until the worker restarts",
                spec.name, msg.topic, msg.partition, self.at(msg.offset), type(exc).__name__, exc,
                msg.partition, extra=about(spec.name, msg, self._group),
            )  # fmt: skip
            return False
        key, value, headers = dead_letter_record(
            msg,
            exc,
            group=self._group,
            handler=spec.name,
            traceback_limit=self._traceback_limit,
        )
        if self._transactional_dlq:
            assert spec.sink is not None  # every lane is bound to the outbox under exactly once
            spec.sink(msg, [Output(spec.dlq_topic, value, key, headers)])
        elif not await self._send_dead_letter(lane, spec.dlq_topic, msg, key, value, headers):
            return False
        if self._rejects is not None:
            self._rejects(msg)
        self._stats.dead_lettered_by[lane.labels] += 1
        lane.dead_lettered += 1
        lane.last_dead, lane.dead_run = seq, run
        level = logging.INFO if isinstance(exc, Reject) else logging.WARNING
        log.log(
            level,
            "handler %s: dead-lettered %s[%d]@%s to %s after %d attempt(s): %s: %s",
            spec.name, msg.topic, msg.partition, self.at(msg.offset), spec.dlq_topic, msg.attempt,
            type(exc).__name__, exc, extra=about(spec.name, msg, self._group),
        )  # fmt: skip
        return True

    async def _send_dead_letter(
        self,
        lane: Lane,
        topic: str,
        msg: Message,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        what: str = "DLQ write",
    ) -> bool:
        """Produce the DLQ copy and wait for its ack, retrying; False if the lane stopped."""
        delay = 0.1
        while True:
            try:
                if self._tracer is None:
                    fut = self._producer.send(topic, value, key, headers)
                else:
                    fut = self._traced_send(topic, msg, key, value, headers)
                await asyncio.wrap_future(fut)
                if failpoints.ACTIVE:
                    failpoints.hit("after_dlq")
                return True
            except Exception as dlq_exc:
                log.warning(  # not about(): a DLQ outage repeats this, so it is rate-limited
                    "%s to %s for %s[%d]@%s failed (%s); the partition waits and "
                    "retries in %.1fs",
                    what, topic, msg.topic, msg.partition, self.at(msg.offset), dlq_exc, delay,
                )  # fmt: skip
                if not await self.sleep(lane, delay):
                    return False
                delay = min(delay * 2, 30.0)

    def _traced_send(
        self, topic: str, msg: Message, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Future[Any]:
        """The DLQ write as a span in the record's trace (``streamq.tracing``)."""
        tracer = self._tracer
        assert tracer is not None
        return tracer.publish(  # type: ignore[no-any-return]
            topic,
            headers,
            lambda traced: self._producer.send(topic, value, key, traced),
            parent=tracer.context_of(msg.raw_headers),
        )

    async def await_lease(self, lane: Lane) -> bool:
        """Past the lease deadline: start nothing until it is renewed or the lane stops.

        A member that was frozen (SIGSTOP, a long GC pause) wakes up past its deadline; its
        poll thread then finds the lease gone and stops the lane, and meanwhile no handler
        starts for a partition that may already belong to someone else.
        """
        lease = lane.lease
        # The poll thread moves the deadline; polling it is the point, not an oversight.
        while lease is not None and not lane.stopped and time.monotonic() >= lease.deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return not lane.stopped

    async def sleep(self, lane: Lane, delay: float) -> bool:
        """Back off without blocking other lanes; False if the lane was stopped meanwhile."""
        if delay > 0 and not lane.stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.wake.wait(), delay)
        return not lane.stopped
