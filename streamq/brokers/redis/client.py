"""The redis-py import: a missing extra fails here, once, with the hint."""

from __future__ import annotations

try:
    import redis
    from redis.exceptions import (
        AuthenticationError,
        NoPermissionError,
        NoScriptError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    if "redis" not in str(exc):
        raise
    raise ImportError("streamq[redis] is not installed: pip install 'streamq[redis]'") from exc

__all__ = [
    "AuthenticationError",
    "NoPermissionError",
    "NoScriptError",
    "RedisConnectionError",
    "RedisTimeoutError",
    "ResponseError",
    "redis",
]
