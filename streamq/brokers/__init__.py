"""Broker backends, chosen by URL scheme.

``connect(url)`` returns the ``Broker`` for a URL. Backends with client libraries import them
lazily, so ``memory://`` works with the base install and a missing extra says how to add it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..credentials import redact_url
from ..errors import ConfigError
from .base import Admin, Backend, Broker, ProducerBackend, RecordMetadata

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Admin",
    "Backend",
    "Broker",
    "ProducerBackend",
    "RecordMetadata",
    "connect",
    "ensure_topic",
    "in_process",
]

SCHEMES = ("memory", "kafka", "redis", "rediss")


def in_process(url: str) -> bool:
    """Whether the broker's log lives inside this process (``memory://``).

    Such a log is neither shared with other processes nor outlives this one: extra worker
    processes would each see an empty log, and a crash loses the log with the crash.
    """
    return isinstance(url, str) and urlsplit(url).scheme.lower() == "memory"


def connect(url: str, settings: Settings | None = None) -> Broker:
    """The broker client factory for ``url``; raises ConfigError for what cannot be served.

    ``settings`` carries client options (librdkafka passthrough, timeouts); default: the
    environment's.
    """
    shown = redact_url(url) if isinstance(url, str) else url
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"broker: {shown!r} is not a broker URL; expected memory://NAME, "
            "kafka://host:port or redis://host:port/db"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url)
    if settings is None:
        from ..settings import load_settings

        settings = load_settings(broker=url)
    if scheme == "kafka":
        from .kafka import KafkaBroker

        return KafkaBroker(url, settings)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, settings)
    raise ConfigError(
        f"broker: unknown URL scheme {scheme!r} in {shown!r}; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )


def ensure_topic(broker: Broker, name: str, partitions: int, *, compact: bool = False) -> None:
    """Create ``name`` unless it exists (streamq's own topics: the schedule, delays, retries).

    Another member creating it at the same moment is fine: the loser's "exists" is ignored.
    """
    admin = broker.admin()
    try:
        if name not in admin.list_topics():
            with contextlib.suppress(ConfigError):
                admin.create_topic(name, partitions, compact=compact)
    finally:
        admin.close()
