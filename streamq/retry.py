"""Retry policy: in-place retries with exponential backoff and full jitter.

The names follow Celery (``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``) because
our users know them. Full jitter means a delay drawn uniformly from ``[0, min(cap, base *
2**(n-1))]``, so workers that failed together do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["NEVER_POISON", "RetryPolicy"]

# Process-critical errors are never dead-lettered (Karafka's rule): they say nothing about the
# record, so the partition stops uncommitted and the record is redelivered after a restart.
NEVER_POISON: tuple[type[BaseException], ...] = (
    SystemExit,
    KeyboardInterrupt,
    asyncio.CancelledError,
    MemoryError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing record is retried before the DLQ.

    Args:
        max_retries: Retries after the first attempt; 0 dead-letters on the first failure.
        backoff: Base delay in seconds of the first retry; doubles each retry.
        backoff_max: Cap on any single delay, in seconds.
        jitter: Draw each delay uniformly from [0, computed] (full jitter).
    """

    max_retries: int = 3
    backoff: float = 0.2
    backoff_max: float = 30.0
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool):
            problems.append("max_retries: must be an integer")
        elif self.max_retries < 0:
            problems.append("max_retries: must be >= 0")
        if not isinstance(self.backoff, int | float) or self.backoff < 0:
            problems.append("retry_backoff: must be a number >= 0")
        if not isinstance(self.backoff_max, int | float) or self.backoff_max < 0:
            problems.append("retry_backoff_max: must be a number >= 0")
        elif isinstance(self.backoff, int | float) and self.backoff_max < self.backoff:
            problems.append("retry_backoff_max: must be >= retry_backoff")
        if problems:
            raise ConfigError(problems)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.backoff_max, self.backoff * (2 ** min(retry - 1, 62)))
        return self.rng.uniform(0.0, ceiling) if self.jitter else ceiling
