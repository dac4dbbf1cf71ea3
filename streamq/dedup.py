"""Dedup stores: make redelivery harmless by remembering which records were handled.

The worker asks ``seen(keys)`` once per unit before handling it, skips the records already
seen, and calls ``mark(keys)`` for records that finished (handled or dead-lettered) before it
reports them done, so before any commit can pass them. A store that fails must never cost a
record: a failed check counts as "not seen" (the record is handled again), and a failed mark
is logged and does not hold up the commit. After a failure the store is left alone for a
few seconds, so an unreachable store does not stall every unit on its timeout.

Keys default to the record's coordinates (``topic:partition:offset``): redelivery of the same
record is skipped, a record produced twice is not. ``dedup_key=`` derives a business key
instead, which also suppresses a re-sent duplicate.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .credentials import redact_url, redis_client, scrub
from .errors import ConfigError
from .logs import get_logger
from .message import Message

__all__ = [
    "DedupStore",
    "GuardedStore",
    "MemoryDedup",
    "RedisDedup",
    "coordinates",
    "make_store",
]

log = get_logger("streamq.dedup")

KeyFn = Callable[[Message], str]


@runtime_checkable
class DedupStore(Protocol):
    """What a dedup store implements; both calls take a whole unit's keys at once."""

    def seen(self, keys: Sequence[str]) -> list[bool]:
        """For each key, whether it was marked before."""

    def mark(self, keys: Sequence[str]) -> None:
        """Remember the keys as handled."""


def coordinates(msg: Message) -> str:
    return f"{msg.topic}:{msg.partition}:{msg.offset}"


class MemoryDedup:
    """A per-process LRU of the last ``max_keys`` keys: survives redelivery, not a restart."""

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ConfigError("dedup: max_keys must be >= 1")
        self.max_keys = max_keys
        self._keys: OrderedDict[str, None] = OrderedDict()

    def seen(self, keys: Sequence[str]) -> list[bool]:
        known = self._keys
        return [k in known for k in keys]

    def mark(self, keys: Sequence[str]) -> None:
        known = self._keys
        for k in keys:
            known[k] = None
            known.move_to_end(k)
        while len(known) > self.max_keys:
            known.popitem(last=False)


class RedisDedup:
    """Keys in Redis, shared by every member of the group, expiring after ``ttl`` seconds."""

    def __init__(
        self, url: str, namespace: str, ttl: float = 7 * 86400, password: str | None = None
    ) -> None:
        self.url = url
        self._r = redis_client(url, password, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = f"streamq:dedup:{namespace}:"
        self._ttl_ms = int(ttl * 1000)

    def seen(self, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        found = self._r.mget([self._prefix + k for k in keys])
        return [v is not None for v in found]

    def mark(self, keys: Sequence[str]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.set(self._prefix + k, b"1", px=self._ttl_ms)
        pipe.execute()


class GuardedStore:
    """Wraps a store so its failures degrade safely instead of losing or blocking records."""

    def __init__(self, store: DedupStore, name: str, pause: float = 5.0) -> None:
        self.store = store
        self.name = name
        self._pause = pause
        self._quiet_until = 0.0
        # for metrics: failed calls, and keys not checked or not marked, by operation
        self.errors: Counter[str] = Counter()
        self.bypassed: Counter[str] = Counter()

    def seen(self, keys: Sequence[str]) -> list[bool]:
        if time.monotonic() < self._quiet_until:
            self.bypassed["check"] += len(keys)
            return [False] * len(keys)
        try:
            return self.store.seen(keys)
        except Exception as exc:
            self._failed("check", exc, "those records are handled again")
            self.bypassed["check"] += len(keys)
            return [False] * len(keys)

    def mark(self, keys: Sequence[str]) -> None:
        if time.monotonic() < self._quiet_until:
            self.bypassed["mark"] += len(keys)
            return
        try:
            self.store.mark(keys)
        except Exception as exc:
            self._failed("mark", exc, "a redelivery of those records would be handled again")
            self.bypassed["mark"] += len(keys)

    def _failed(self, what: str, exc: Exception, consequence: str) -> None:
        self.errors[what] += 1
        self._quiet_until = time.monotonic() + self._pause
        log.warning(
            "dedup store %s: %s failed (%s); %s; leaving the store alone for %.0fs",
            self.name, what, exc, consequence, self._pause,
        )  # fmt: skip


def make_store(
    spec: Any, *, namespace: str, max_keys: int, ttl: float, redis_password: str | None = None
) -> GuardedStore | None:
    """Build the store a handler's ``dedup=`` names."""
    if spec is None:
        return None
    if spec == "memory":
        return GuardedStore(MemoryDedup(max_keys), "memory")
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://")):
        store = RedisDedup(spec, namespace, ttl, redis_password)
        return GuardedStore(store, redact_url(spec))
    if isinstance(spec, DedupStore):
        return GuardedStore(spec, type(spec).__name__)
    raise ConfigError(
        f"dedup: {scrub(repr(spec))} is not 'memory', a redis:// URL, or an object with seen(keys) "
        "and mark(keys)"
    )
