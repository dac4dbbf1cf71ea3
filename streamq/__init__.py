"""streamq: ordered, at-least-once stream processing over Kafka and Redis Streams.

Write plain handler functions per topic; streamq runs them as consumer-group members, in
order per partition, commits only after processing, retries with backoff and jitter, and
dead-letters what cannot be handled.
"""

from __future__ import annotations

from importlib import metadata as _metadata

# Application
from .app import App
from .brokers.base import RecordMetadata
from .dispatch import IMPLEMENTATION

# Errors
from .errors import (
    BrokerError,
    BrokerUnavailable,
    CommitFailed,
    ConfigError,
    DecodeError,
    MemberFenced,
    PartitionHalted,
    PoisonMessage,
    Reject,
    SchemaError,
    ShutdownTimeout,
    StreamqError,
    WorkerLost,
)

# Policies and enums
from .handlers import CommitMode, Ordering

# Records
from .message import Message, TopicPartition
from .pipeline import Out
from .producer import Producer
from .retry import RetryPolicy
from .schedules import Tick
from .settings import Settings

try:
    __version__ = _metadata.version("streamq")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = [
    "IMPLEMENTATION",
    "App",
    "BrokerError",
    "BrokerUnavailable",
    "CommitFailed",
    "CommitMode",
    "ConfigError",
    "DecodeError",
    "MemberFenced",
    "Message",
    "Ordering",
    "Out",
    "PartitionHalted",
    "PoisonMessage",
    "Producer",
    "RecordMetadata",
    "Reject",
    "RetryPolicy",
    "SchemaError",
    "Settings",
    "ShutdownTimeout",
    "StreamqError",
    "Tick",
    "TopicPartition",
    "WorkerLost",
    "__version__",
]
