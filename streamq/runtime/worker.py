"""One worker process: a ``GroupRunner`` per consumer group, sharing one event loop.

``serve()`` is the asyncio entry point; ``run_worker()`` wraps it for a blocking call with
signal handling: the first SIGINT/SIGTERM stops gracefully (stop polling, finish running
units, commit synchronously, leave the group), a second one exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from .. import deadline, logs
from .._native import IMPLEMENTATION
from ..brokers import connect, ensure_topic, in_process
from ..brokers.base import Backend, Broker
from ..crashes import CrashCounter, counter_url
from ..credentials import redact_url
from ..dedup import RedisDedup
from ..delays import ensure_delay_topic
from ..errors import (
    EXIT_SHUTDOWN_TIMEOUT,
    ConfigError,
    PartitionHalted,
    ShutdownTimeout,
)
from ..handlers import CommitMode, HandlerSpec
from ..metrics import Exporter
from ..settings import Settings
from .delays import DelayMover
from .group import GroupRunner
from .pools import Pools
from .scheduler import Scheduler
from .share import is_share_group

if TYPE_CHECKING:
    from ..app import App

__all__ = [
    "STOP_DEADLINE_GRACE",
    "Worker",
    "critical_line",
    "run_worker",
]

log = logs.get_logger("streamq.worker")

# A stop that has not ended this long after shutdown_timeout is stuck where Python cannot
# help: the GIL-free deadline (streamq.deadline) prints every thread's stack and exits 1.
# The Python watchdog of a signalled stop (exit 3, a log line) fires 10 s before it.
STOP_DEADLINE_GRACE = 15.0
# The delay mover's thread gets this long to leave its group; a move it is in the middle of
# is one transaction, so cutting it short (a broker outage) loses and repeats nothing.
MOVER_STOP_WAIT = 5.0


def critical_line(exc: BaseException) -> str:
    """The one line a worker ends with when a handler raised a process-critical error."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (
        f"a handler raised {what}, a process-critical error: the worker stopped, and the "
        "record was not committed, so it is handled again after a restart"
    )


class Worker:
    def __init__(
        self,
        app: App,
        until_idle: float | None,
        *,
        groups: dict[str, dict[str, HandlerSpec]] | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.until_idle = until_idle
        self._groups = groups  # replay: one handler over fixed ranges instead of the app's
        self._backends = backends or {}
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self.critical: BaseException | None = None
        self.runners: list[GroupRunner] = []
        self.scheduler: Scheduler | None = None
        self.jobs_timed_out = False
        self._started = time.monotonic()

    def request_stop(self) -> None:
        """Thread-safe: ask the worker to stop gracefully."""
        self._stop_requested.set()

    def _critical(self, exc: BaseException) -> None:
        if self.critical is None:
            self.critical = exc
        self.request_stop()

    async def serve(self) -> None:
        app = self.app
        if not app.handlers and not app.jobs:
            raise ConfigError(f"app {app.name!r} has no handlers and no jobs: nothing to run")
        settings = app.settings
        loop = asyncio.get_running_loop()
        log.info(
            "worker pid %d: app %s on %s, dispatch core %s",
            os.getpid(), app.name, redact_url(settings.broker), IMPLEMENTATION,
        )  # fmt: skip
        broker = connect(settings.broker, settings)
        producer = broker.producer()
        probe_lock = asyncio.Lock()
        pools = Pools.for_specs(settings.threads, settings.processes, app.handlers.values())
        exporter: Exporter | None = None
        scheduler: Scheduler | None = None
        mover: DelayMover | None = None
        try:
            for group, specs in (self._groups or app.groups()).items():
                self.runners.append(
                    GroupRunner(
                        group,
                        specs,
                        broker,
                        producer,
                        settings,
                        loop,
                        app.stats,
                        self._critical,
                        crash_counter(group, specs, broker, settings),
                        probe_lock,
                        self._backends.get(group),
                        pools,
                        metrics=self.metrics,
                    )
                )
            if self.metrics:
                exporter = Exporter(app.stats, self.runners)
                exporter.start(settings.poll_ttl, settings.consuming_ttl)
            if self._groups is None:
                prepare_retries(app, broker)
            if app.jobs and self._groups is None:
                scheduler = Scheduler(app.name, app.jobs, broker, settings, app.stats)
                self.scheduler = scheduler
                scheduler.start()
            if settings.move_delays and self._groups is None:
                mover = DelayMover(broker, producer, settings, app.stats)
                mover.start()
            for runner in self.runners:
                runner.start()
            await self._wait_for_stop()
        finally:
            # A stop begins, whatever caused it (a signal, idleness, a failed poll loop): from
            # here on it has a deadline that holds even if every Python thread freezes.
            token = deadline.arm(settings.shutdown_timeout + STOP_DEADLINE_GRACE)
            try:
                if scheduler is not None:
                    scheduler.stop()
                if mover is not None:
                    mover.stop()
                for runner in self.runners:
                    runner.stop()
                # Keep the loop turning while the poll threads drain: running lanes finish on it.
                while not all(r.closed.is_set() for r in self.runners):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if scheduler is not None and not await asyncio.to_thread(
                    scheduler.wait, settings.shutdown_timeout
                ):
                    self.jobs_timed_out = True
                if mover is not None:  # a move is one transaction: it ends, or it never was,
                    await asyncio.to_thread(mover.wait, MOVER_STOP_WAIT)  # so it may be cut
                producer.flush(settings.shutdown_timeout)
                producer.close()
                pools.shutdown()
                if exporter is not None:
                    exporter.stop()
            finally:
                deadline.disarm(token)
        self._raise_outcome()

    async def _wait_for_stop(self) -> None:
        until_idle = self.until_idle
        # Polls flags that poll threads and signal handlers set from other threads.
        while not self._stop_requested.is_set():
            await asyncio.sleep(0.02)
            if any(r.closed.is_set() for r in self.runners):
                return  # a poll loop died: stop the others too
            if self.scheduler is not None and self.scheduler.closed.is_set():
                return  # the schedule's thread died (its error is raised below)
            if until_idle is not None:
                # a worker of jobs only is idle from its start: until_idle is then its run time
                since = [r.idle_since for r in self.runners] or [self._started]
                idle = [s for s in since if s is not None]
                if len(idle) == len(since) and time.monotonic() - max(idle) >= until_idle:
                    return

    def _raise_outcome(self) -> None:
        if self.critical is not None:
            raise self.critical
        if self.scheduler is not None and self.scheduler.error is not None:
            raise self.scheduler.error
        for runner in self.runners:
            if runner.error is not None:
                raise runner.error
        if any(r.timed_out for r in self.runners) or self.jobs_timed_out:
            raise ShutdownTimeout(
                "handlers were still running after shutdown_timeout; their records were not "
                "committed and will be redelivered"
            )
        halted = [tp for r in self.runners for tp in r.halted]
        if halted:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in halted)
            raise PartitionHalted(
                f"stopped with halted partitions: {names}; their records from the halt on "
                "were not committed and will be redelivered"
            )


def run_worker(app: App, until_idle: float | None, worker: Worker | None = None) -> None:
    """Block in one worker until stopped (signal) or idle; raise what ended it badly."""
    worker = worker or Worker(app, until_idle)
    done = threading.Event()
    signals = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: stopping gracefully", signal.Signals(signum).name)
            worker.request_stop()
            _watchdog(done, app.settings.shutdown_timeout + 5.0)
        else:
            log.warning("second signal: exiting now without committing running work")
            os._exit(128 + signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        asyncio.run(worker.serve())
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watchdog(done: threading.Event, deadline: float) -> None:
    """A sync handler that hangs blocks the event loop itself; only exiting frees it."""

    def watch() -> None:
        if not done.wait(deadline):
            log.critical(
                "shutdown did not finish within %.0fs (a handler is hung, or the broker does "
                "not answer); exiting with code %d; uncommitted records will be redelivered",
                deadline,
                EXIT_SHUTDOWN_TIMEOUT,
            )
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

    threading.Thread(target=watch, name="streamq-shutdown-watchdog", daemon=True).start()


def crash_counter(
    group: str, specs: dict[str, HandlerSpec], broker: Broker, settings: Settings
) -> CrashCounter | None:
    """The group's crash counter, or None (said once) when there is no Redis to keep it in."""
    if (
        settings.crash_limit == 0
        or in_process(settings.broker)  # the log dies with the process anyway
        or any(s.commit is CommitMode.BEFORE for s in specs.values())  # at-most-once
        or is_share_group(specs)  # the broker's delivery count does it (runtime.share)
    ):
        return None
    dedup_urls = [
        s.dedup.store.url
        for s in specs.values()
        if s.dedup is not None and isinstance(s.dedup.store, RedisDedup)
    ]
    broker_url = getattr(broker, "client_url", settings.broker)
    url = counter_url(settings.crash_store, broker_url, dedup_urls)
    if url is None:
        log.info(
            "group %s: crash counter off (no Redis to keep it in): a record that kills the "
            "worker is redelivered after every restart; set crash_store=redis://... to "
            "dead-letter it after crash_limit deaths",
            group,
        )
        return None
    return CrashCounter(url, group, settings.crash_limit, settings.dedup_ttl, settings.redis_secret)


def prepare_retries(app: App, broker: Broker) -> None:
    """Create what ``retry="later"`` handlers send to, before anything is read.

    That is the delay topic, and their retry topics with as many partitions as the topic
    each retries.
    """
    later = [s for s in app.handlers.values() if s.retry_topic not in (None, s.topic)]
    if not later:
        return
    settings = app.settings
    ensure_delay_topic(broker, settings)
    admin = broker.admin()
    try:
        counts = admin.list_topics()
    finally:
        admin.close()
    for spec in later:
        assert spec.retry_topic is not None
        partitions = counts.get(spec.topic) or settings.delay_partitions
        ensure_topic(broker, spec.retry_topic, partitions)
