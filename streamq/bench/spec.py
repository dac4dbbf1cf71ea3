"""What one benchmark is: the ``BenchSpec`` the CLI builds and every drain process receives.

A spec crosses process boundaries as JSON (``python -m streamq.bench --drain SIDE SPEC``), so
it holds only plain values. ``validate`` reports every bad option at once, in one ``ConfigError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

HANDLERS = ("noop", "json", "pydantic", "cpu")
EXECUTORS = ("inline", "asyncio", "threads", "processes")
GUARANTEES = ("at_least_once", "exactly_once")
# --transform: handlers that decode the input, so the output can be derived from it
TRANSFORM_HANDLERS = ("json", "cpu")


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark: what to fill, how to drain, and how often."""

    broker: str = "memory://bench"
    messages: int = 100_000
    size: int = 100
    partitions: int = 4
    keys: int = 1000
    handler: str = "json"
    executor: str = "inline"
    ordering: str = "partition"
    # queue mode: ordering="none" runs up to this many records at once per worker (on the
    # raw side, a thread pool of that size per batch when the work sleeps)
    concurrency: int | None = None
    group_type: str = "classic"  # "share": Kafka share groups, Redis competing consumers
    batch: bool = False  # streamq side: a batch=True handler looping over its records
    workers: int = 1
    dedup: str = "none"
    metrics: bool = False  # streamq side: Prometheus metrics on, server on a free port
    rounds: int = 2
    max_seconds: float | None = None
    latency_messages: int = 2000
    latency_rate: float = 2000.0
    max_poll_records: int = 2000
    raw: bool = True
    # consume-transform-produce: one output per input, committed as ``guarantee`` says
    transform: bool = False
    guarantee: str = "at_least_once"
    topic: str = ""
    output_topic: str = ""  # fresh per drain, so each drain counts only its own outputs
    latency_topic: str = ""  # fresh per drain, so no drain times another's records
    shm: str = ""
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        """Counter slots: one per worker, plus one per pool process under ``processes``."""
        pool = (os.cpu_count() or 1) if self.executor == "processes" else 0
        return self.workers * (1 + pool)

    @property
    def topics(self) -> list[str]:
        return [self.topic, self.latency_topic] if self.latency_topic else [self.topic]

    def validate(self) -> None:
        problems = []
        if not self.broker.startswith(("memory://", "kafka://", "redis://", "rediss://")):
            problems.append(
                f"--broker: {self.broker!r} is not a memory://, kafka:// or redis:// URL"
            )
        problems.extend(
            f"--{name}: must be >= 1"
            for name in ("messages", "size", "partitions", "keys", "workers", "rounds")
            if getattr(self, name) < 1
        )
        try:
            parse_handler(self.handler)
        except ValueError as exc:
            problems.append(f"--handler: {exc}")
        if self.executor not in EXECUTORS:
            problems.append(f"--executor: one of {', '.join(EXECUTORS)}")
        if self.ordering not in ("partition", "key", "none"):
            problems.append("--ordering: partition, key or none")
        if self.group_type not in ("classic", "share"):
            problems.append("--group-type: classic or share")
        if self.group_type == "share" and self.ordering != "none":
            problems.append("--group-type share: records of a partition go to many members, "
                            "so give --ordering none")  # fmt: skip
        if self.group_type == "share" and self.transform:
            problems.append("--group-type share: without --transform")
        if self.batch and (
            self.transform
            or self.executor != "inline"
            or parse_handler(self.handler)[0] not in ("noop", "json")
        ):
            problems.append("--batch: with --handler noop or json, inline, without --transform")
        if self.concurrency is not None and self.ordering != "none":
            problems.append("--concurrency: with --ordering none")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append("--concurrency: must be >= 1")
        if self.workers > 1 and self.broker.startswith("memory://"):
            problems.append("--workers: memory:// lives in one process; use Kafka or Redis")
        if not (self.dedup in ("none", "memory") or self.dedup.startswith("redis://")):
            problems.append("--dedup: none, memory or a redis:// URL")
        problems.extend(self._transform_problems())
        if problems:
            raise ConfigError(problems)

    def _transform_problems(self) -> list[str]:
        problems = []
        if self.guarantee not in GUARANTEES:
            problems.append(f"--guarantee: one of {', '.join(GUARANTEES)}")
        if not self.transform:
            if self.guarantee == "exactly_once":
                problems.append("--guarantee: exactly_once needs --transform (outputs to commit)")
            return problems
        if self.broker.startswith("memory://"):
            problems.append("--transform: Kafka or Redis (memory:// has no raw producer loop)")
        if self.handler not in TRANSFORM_HANDLERS:
            problems.append(
                f"--transform: with --handler {' or '.join(TRANSFORM_HANDLERS)} (the output "
                "is derived from the decoded input)"
            )
        if self.executor == "processes":
            problems.append("--transform: with --executor inline, asyncio or threads")
        return problems


def parse_handler(text: str) -> tuple[str, float]:
    """``noop|json|pydantic|cpu|sleep:MS`` as (kind, sleep seconds)."""
    if text in HANDLERS:
        return text, 0.0
    if text.startswith("sleep:"):
        try:
            ms = float(text[6:])
        except ValueError:
            raise ValueError(f"{text!r}: sleep takes milliseconds, e.g. sleep:5") from None
        if ms < 0:
            raise ValueError(f"{text!r}: milliseconds must be >= 0")
        return "sleep", ms / 1000.0
    raise ValueError(f"{text!r} is not one of {', '.join(HANDLERS)}, sleep:MS")
