"""``App``: handlers registered per topic, run as members of consumer groups."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

from .credentials import redact_url
from .dlq import attempt_of
from .errors import ConfigError
from .handlers import HandlerSpec, build_spec
from .message import Message
from .retry import RetryPolicy
from .schedules import JobSpec, build_job
from .settings import Settings, load_settings
from .stats import Stats

__all__ = ["App"]

F = TypeVar("F", bound=Callable[..., Any])


class App:
    """A named set of handlers; the name is the default consumer group.

    Args:
        name: Application name, and the consumer group of handlers that name none.
        broker: Broker URL (``memory://``, ``kafka://``, ``redis://``); else ``STREAMQ_BROKER``.
        **settings: Any field of ``streamq.settings.Settings``; else ``STREAMQ_<FIELD>``.

    Raises:
        ConfigError: Unknown or invalid settings, all of them listed.
    """

    def __init__(self, name: str, broker: str | None = None, **settings: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name: must be a non-empty string (it is the default group)")
        self.name = name
        # Where the app was defined, so spawned workers can import it again (workers > 1).
        self._module: str | None = sys._getframe(1).f_globals.get("__name__")
        if broker is not None:
            settings["broker"] = broker
        self._overrides = settings
        self.settings: Settings = load_settings(**settings)
        self.handlers: dict[tuple[str, str], HandlerSpec] = {}
        self.jobs: dict[str, JobSpec] = {}
        self.stats = Stats()

    def configure(self, **overrides: Any) -> None:
        """Replace settings (the CLI's ``--broker`` uses this); validated like the constructor."""
        merged = {**self._overrides, **overrides}
        self.settings = load_settings(**merged)
        self._overrides = merged
        self._reresolve_dlq()

    def _reresolve_dlq(self) -> None:
        # dlq=True topics derive from dlq_suffix, which configure() may have changed.
        suffix = self.settings.dlq_suffix
        for key, spec in self.handlers.items():
            if spec.dlq is True:
                topic = spec.topic  # a retry topic's records dead-letter where their source's do
                if spec.retry_topic == topic:
                    topic = topic.removesuffix(f".{spec.group}.retry")
                self.handlers[key] = dataclasses.replace(spec, dlq_topic=topic + suffix)

    def handler(
        self,
        topic: str,
        *,
        group: str | None = None,
        batch: bool = False,
        max_batch: int = 500,
        ordering: Literal["partition", "key", "none"] | None = None,
        max_retries: int = 3,
        retry_backoff: float = 0.2,
        retry_backoff_max: float = 30.0,
        retry_jitter: bool = True,
        retry: RetryPolicy | Literal["in_place", "later"] | None = None,
        dlq: bool | str = True,
        dedup: Any = None,
        commit: Literal["after", "before"] = "after",
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        dont_retry_on: tuple[type[BaseException], ...] = (),
        timeout: float | None = None,
        dlq_limit: int | None = None,
        dedup_key: Callable[[Message], str] | None = None,
        executor: Literal["inline", "threads", "asyncio", "processes"] | None = None,
        outputs: Sequence[str] | None = None,
        concurrency: int | None = None,
        group_type: Literal["classic", "share"] = "classic",
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``topic``.

        The signature is inspected now: a parameter annotated with a pydantic model (or any
        type pydantic's TypeAdapter accepts) receives the decoded, validated payload; one
        annotated ``streamq.Message`` receives the record; ``batch=True`` handlers take one
        ``list[streamq.Message]``. Sync and async functions both work.

        Args:
            topic: Topic to consume.
            group: Consumer group; default the app name.
            batch: Call once per partition batch (up to ``max_batch`` records) instead of per
                record. A failing batch is retried whole, then each record alone once; records
                that still fail are dead-lettered.
            max_batch: Largest batch handed to a ``batch=True`` handler.
            ordering: ``"partition"`` (the default: one at a time per partition), ``"key"`` (per key
                lane: different keys in parallel, each key in order) or ``"none"`` (queue
                mode: up to ``concurrency`` records of this worker at once, from any
                partition; a sync handler then runs on the threads executor unless
                ``executor`` says otherwise). Commits stay gap-safe: a partition's commit
                never passes a record still running, so a crash redelivers only unfinished
                ones (and those finished above them).
            concurrency: ``ordering="none"`` only: handler calls running at once in this
                worker (default 32). A record retrying in place holds one of them, and the
                few records queued behind it in its slot; the rest flow.
            group_type: ``"classic"`` or ``"share"`` (queue mode: any number of members
                read the same partitions, each record acknowledged on its own; implies
                ``ordering="none"``). Kafka 4.2+ share groups, or Redis competing
                consumers; a record delivered a third time runs alone, and one delivered
                ``crash_limit + 3`` times goes to the DLQ as ``WorkerLost``. Every handler of
                one group has the same type.
            max_retries: In-place retries after the first attempt, in order.
            retry_backoff: First retry delay in seconds; doubles each retry (Celery's name).
            retry_backoff_max: Cap on one delay, in seconds.
            retry_jitter: Full jitter: each delay uniform in [0, computed].
            retry: The four above as one ``streamq.RetryPolicy``, for a policy shared by
                several handlers; give it or the flat names, not both. Or where retries
                happen: ``"in_place"`` (the default: the partition waits, so order holds)
                or ``"later"``, for handlers that need no order: a failed record is sent
                back through the delay topic with its attempt count (to
                ``<topic>.<group>.retry``, which this handler also reads) after the backoff
                delay, and the partition goes on at once; past ``max_retries`` it goes to
                the DLQ, its headers naming where it first came from
                (``streamq-retry-of``).
            dlq: True for ``<topic>.dlq``, a topic name, or False to halt the partition on a
                record that exhausted its retries.
            dedup: ``"memory"`` (an LRU per handler), ``"redis://..."`` (shared by the
                group), or an object with ``seen(keys)`` and ``mark(keys)``: records whose
                key was marked are skipped (counted in ``stats.deduplicated``).
            dedup_key: Derives the dedup key from a record (a business id); default its
                coordinates, ``topic:partition:offset``.
            commit: ``"after"`` (at-least-once) or ``"before"`` (at-most-once).
            retry_on: Exception types that earn retries; others are dead-lettered at once.
            dont_retry_on: Exception types that are never retried, even if in ``retry_on``.
            timeout: Seconds an async handler may run before it is cancelled, or an
                ``executor="processes"`` handler before its pool process is killed (each
                record then goes to the pool alone); the TimeoutError is then retried and
                dead-lettered like any failure.
            dlq_limit: Most consecutive records of one partition (or key lane) that may be
                dead-lettered; the next one halts the partition instead, so a bad deploy
                does not empty a topic into its DLQ.
            executor: Where the handler runs: ``"inline"`` (sync, on the event loop: the
                default and the cheapest), ``"threads"`` (sync, blocking I/O),
                ``"asyncio"`` (async def, the default for those) or ``"processes"`` (sync,
                CPU-bound, module-level function). Lanes keep their order in every one.
            outputs: The topics this handler produces to (``streamq.Out``): shown as the
                pipeline's stages by ``streamq topics list --app`` and ``status --app``, and
                an ``Out`` to any other topic fails the call (a typo is caught at the first
                record, not found later in the wrong topic).

        Raises:
            ConfigError: Invalid options or a signature that cannot be served, all listed,
                naming the handler and parameter.
        """

        def register(fn: F) -> F:
            spec = build_spec(
                fn,
                topic=topic,
                group=group if group is not None else self.name,
                batch=batch,
                max_batch=max_batch,
                ordering=ordering,
                max_retries=max_retries,
                retry_backoff=retry_backoff,
                retry_backoff_max=retry_backoff_max,
                retry_jitter=retry_jitter,
                retry=retry,
                dlq=dlq,
                dedup=dedup,
                commit=commit,
                dlq_suffix=self.settings.dlq_suffix,
                retry_on=retry_on,
                dont_retry_on=dont_retry_on,
                timeout=timeout,
                dlq_limit=dlq_limit,
                dedup_key=dedup_key,
                dedup_max_keys=self.settings.dedup_max_keys,
                dedup_ttl=self.settings.dedup_ttl,
                redis_password=self.settings.redis_secret,
                executor=executor,
                outputs=outputs,
                concurrency=concurrency,
                group_type=group_type,
            )
            key = (spec.group, spec.topic)
            kinds = {s.group_type for (g, _), s in self.handlers.items() if g == spec.group}
            if kinds and kinds != {spec.group_type}:
                raise ConfigError(
                    f"handler {spec.name!r}: group {spec.group!r} already has "
                    f"{kinds.pop()} handlers; a group is either classic or share (give this "
                    "one another group)"
                )
            if key in self.handlers:
                other = self.handlers[key].name
                raise ConfigError(
                    f"handler {spec.name!r}: topic {topic!r} in group {spec.group!r} already has "
                    f"handler {other!r}; use another group to consume it twice"
                )
            self.handlers[key] = spec
            if spec.retry_topic is not None:  # the same handler reads its retries
                twin = dataclasses.replace(
                    spec, topic=spec.retry_topic, invoke=_counting_attempts(spec.invoke)
                )
                self.handlers[(spec.group, spec.retry_topic)] = twin
            return fn

        return register

    def every(
        self,
        seconds: float | timedelta | None = None,
        *,
        cron: str | None = None,
        tz: str | None = None,
        name: str | None = None,
        missed: Literal["once", "skip", "all"] = "once",
        overlap: Literal["skip", "queue"] = "skip",
        max_retries: int = 3,
        retry_backoff: float = 0.2,
        retry_backoff_max: float = 30.0,
        retry_jitter: bool = True,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        executor: Literal["threads", "asyncio", "processes"] | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as a periodic job: one member fires each tick.

        However many workers run the app, on however many machines, the member that owns
        the app's schedule (``streamq.runtime.scheduler``) fires each tick, after storing it
        with its ownership, so a tick is never fired twice; when that member dies another
        takes over within the broker's session (Kafka) or lease (Redis) timeout. The job is
        a plain function, sync or async, taking nothing or the ``streamq.Tick`` it runs for.

        Args:
            seconds: The interval (seconds or a ``timedelta``, at least 0.1 s); ticks fall on
                its multiples since the epoch, so ``every(60)`` fires on the minute.
            cron: A cron expression instead (five fields, ``"*/5 * * * *"``).
            tz: The time zone of ``cron`` (IANA name); default UTC. Across a DST change a
                skipped time fires at the first minute after the gap, a repeated one once.
            name: The job's name in ``streamq schedules``; default the function's name.
            missed: Ticks that fell due while no member owned the schedule (downtime):
                ``"once"`` fires the latest of them, ``"skip"`` none, ``"all"`` each.
            overlap: A tick due while the previous run still runs: ``"skip"`` it, or
                ``"queue"`` it to run next.
            max_retries: In-place retries of a failing run after its first attempt.
            retry_backoff: First retry delay in seconds; doubles each retry.
            retry_backoff_max: Cap on one delay, in seconds.
            retry_jitter: Full jitter: each delay uniform in [0, computed].
            retry: The four above as one ``streamq.RetryPolicy``; give it or them.
            timeout: Seconds an async job may run before it is cancelled (and retried).
            executor: ``"threads"`` (sync jobs: the default), ``"asyncio"`` (async jobs:
                the default) or ``"processes"`` (sync, CPU-bound, module-level).

        Raises:
            ConfigError: Invalid options, a function that cannot be called with a tick, or
                a name taken by another job; every problem listed.
        """
        flat = (max_retries, retry_backoff, retry_backoff_max, retry_jitter)

        def register(fn: F) -> F:
            if retry is not None and flat != (3, 0.2, 30.0, True):
                raise ConfigError("retry: give retry=RetryPolicy(...) or the flat names, not both")
            policy = retry if retry is not None else RetryPolicy(*flat)
            job = build_job(fn, seconds=seconds, cron=cron, tz=tz, name=name, missed=missed,
                            overlap=overlap, retry=policy, timeout=timeout,
                            executor=executor)  # fmt: skip
            if job.name in self.jobs:
                raise ConfigError(f"job {job.name!r}: the app has a job of that name already")
            self.jobs[job.name] = job
            return fn

        return register

    def groups(self) -> dict[str, dict[str, HandlerSpec]]:
        """Handlers by consumer group, then topic."""
        out: dict[str, dict[str, HandlerSpec]] = {}
        for (group, topic), spec in self.handlers.items():
            out.setdefault(group, {})[topic] = spec
        return out

    def run(
        self,
        workers: int = 1,
        until_idle: float | None = None,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """Consume until SIGINT/SIGTERM, or until caught up for ``until_idle`` seconds.

        Graceful stop: stop polling, let running handlers finish (up to
        ``shutdown_timeout``), commit synchronously, leave the group. With ``until_idle``,
        idle time counts only while this member holds its whole assignment with nothing in
        flight and everything committed, so it means "the group has caught up".

        Args:
            workers: Member processes to run; more than one needs a broker shared across
                processes (not ``memory://``).
            until_idle: Seconds without new records after which to stop; None runs forever.
            metrics_port: Serve Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` here
                (0: a free port), one view over all workers (``streamq.metrics``).
            metrics_host: The address that port binds to.

        Raises:
            ConfigError: Invalid arguments or settings.
            ShutdownTimeout: Handlers outlived ``shutdown_timeout``.
            PartitionHalted: The run ended with partitions halted at a record.
        """
        from .metrics import serving
        from .runtime.launch import launch

        with serving(metrics_host, metrics_port) as server:
            code = launch(self, workers, until_idle, server=server)
        if code:
            raise SystemExit(code)

    async def serve(self, until_idle: float | None = None) -> None:
        """Run one worker inside an existing event loop (sync handlers block that loop)."""
        from .runtime.launch import check_run_args
        from .runtime.worker import Worker

        check_run_args(self, 1, until_idle)
        await Worker(self, until_idle).serve()

    def __repr__(self) -> str:
        broker = redact_url(self.settings.broker)
        return f"App({self.name!r}, broker={broker!r}, handlers={len(self.handlers)})"


def _counting_attempts(invoke: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """A retry topic's records carry their attempt in a header: ``msg.attempt`` says it.

    Only the retry topic's handler pays for reading the header; a pool process
    (``executor="processes"``) calls the function itself, so there ``msg.attempt`` stays 1.
    """

    def invoke_attempt(msg: Message) -> Any:
        msg.attempt = attempt_of(msg)
        return invoke(msg)

    return invoke_attempt
