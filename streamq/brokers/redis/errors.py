"""Which redis-py errors mean "Redis is away", and waiting until it answers.

Each call site translates what it catches into streamq's tree (``streamq.errors``) with the
command that failed in the message; nothing from redis-py escapes the consumer or producer.
"""

from __future__ import annotations

from ...credentials import redact_url
from ...errors import ConfigError
from ..base import wait_until_reachable
from .client import (
    AuthenticationError,
    NoPermissionError,
    RedisConnectionError,
    RedisTimeoutError,
    redis,
)

__all__ = ["UNAVAILABLE", "wait_for_redis"]

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def wait_for_redis(client: redis.Redis, where: str, deadline_s: float) -> None:
    """Until Redis answers; refused credentials end the wait at once (retrying cannot help)."""
    shown = redact_url(where)

    def probe(timeout: float) -> None:
        try:
            client.ping()
        except (AuthenticationError, NoPermissionError) as exc:
            raise ConfigError(f"redis at {shown} refused the credentials: {exc}") from None

    wait_until_reachable(
        probe, broker="Redis", where=shown, deadline_s=deadline_s, errors=UNAVAILABLE
    )
