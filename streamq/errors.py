"""Every error streamq raises, in one tree.

```
StreamqError
├── ConfigError(StreamqError, ValueError)      misuse: bad settings, handler signature, URL
├── BrokerError                                 the broker said no, or did not answer
│   ├── BrokerUnavailable                       cannot connect; retried with backoff
│   ├── UnknownTopicOrPartition                 names a topic/partition the broker lacks
│   ├── CommitFailed                            a commit was refused (often: lost ownership)
│   ├── PartitionLost                           ownership ended without an orderly revoke
│   └── MemberFenced                            the group replaced this member: it must stop
├── PoisonMessage                               the record itself is bad: straight to the DLQ
│   ├── DecodeError                             not JSON (or a null value)
│   └── SchemaError                             JSON, but not what the handler declared
├── Reject                                      a handler dead-letters a record on purpose
├── PartitionHalted                             a run ended with partitions stopped at a record
└── ShutdownTimeout                             handlers outlived shutdown_timeout
```

Backends translate their client's errors into this tree at the boundary, so nothing from
confluent-kafka or redis-py leaks upwards. Errors about a record carry its coordinates as
attributes and define ``__reduce__`` so they survive a process pool.

The exit codes live here too, with the one map from an error to its code
(``exit_code_for``): the CLI, a worker process and the supervisor all read them from here.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_CRITICAL",
    "EXIT_FENCED",
    "EXIT_FINAL",
    "EXIT_HALTED",
    "EXIT_INTERRUPTED",
    "EXIT_ORPHANED",
    "EXIT_RUNTIME",
    "EXIT_SHUTDOWN_TIMEOUT",
    "EXIT_USAGE",
    "BrokerError",
    "BrokerUnavailable",
    "CommitFailed",
    "ConfigError",
    "DecodeError",
    "MemberFenced",
    "PartitionHalted",
    "PartitionLost",
    "PoisonMessage",
    "Reject",
    "SchemaError",
    "ShutdownTimeout",
    "StreamqError",
    "UnknownTopicOrPartition",
    "exit_code_for",
]

# Exit codes of `streamq` commands, worker processes and the supervisor.
EXIT_RUNTIME = 1  # broker or runtime error (also faulthandler's: stuck past a hard deadline)
EXIT_USAGE = 2  # bad usage or configuration, an unknown topic
EXIT_SHUTDOWN_TIMEOUT = 3  # handlers outlived shutdown_timeout: their records are not committed
EXIT_HALTED = 4  # the run ended with a partition halted at a record
EXIT_FENCED = 5  # the group replaced this member (a second process with its instance_id)
# The supervisor died and this worker was still running stop_timeout seconds later (its
# Python frozen, or it ignored the SIGTERM): nobody reads this code, the kernel reaps it.
EXIT_ORPHANED = 6
# A handler raised a process-critical error (SystemExit, KeyboardInterrupt, CancelledError,
# MemoryError, ...): never poison, so its record was left uncommitted for the next run.
EXIT_CRITICAL = 7
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
# Codes after which the supervisor does not restart a worker: a restart cannot help.
EXIT_FINAL = (0, EXIT_USAGE, EXIT_HALTED, EXIT_FENCED)


class StreamqError(Exception):
    """Root of every streamq error: catch this to catch them all."""


class ConfigError(StreamqError, ValueError):
    """Misuse found before any record moved: settings, handler options, URLs, signatures.

    Raised eagerly (at ``@app.handler`` or ``App(...)``) with every problem found, one per
    line, each prefixed by its key path, so one run shows everything to fix.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class BrokerError(StreamqError):
    """The broker refused an operation or could not be reached."""


class BrokerUnavailable(BrokerError):
    """No connection to the broker; callers retry with backoff rather than crash."""


class UnknownTopicOrPartition(BrokerError):
    """A topic or partition that the broker does not have."""


class CommitFailed(BrokerError):
    """A commit was refused; the records stay uncommitted and will be redelivered."""


class PartitionLost(BrokerError):
    """Ownership of a partition ended without an orderly revoke; nothing may be committed."""


class MemberFenced(BrokerError):
    """The broker fenced this member for good: a second process with its ``instance_id``.

    (Or the client hit another fatal error.)
    Carrying on would handle records another member handles too, and no commit can succeed,
    so the worker stops at once and exits with its own code (5), which the supervisor does
    not restart: a restart would only fence the other process in turn.
    """


class _RecordError(StreamqError):
    """An error about one record, carrying its coordinates."""

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.topic, self.partition, self.offset))


def _rebuild(
    cls: type[_RecordError],
    message: str,
    topic: str | None,
    partition: int | None,
    offset: int | None,
) -> _RecordError:
    return cls(message, topic=topic, partition=partition, offset=offset)


class PoisonMessage(_RecordError):
    """The record cannot be handled whatever we do: it skips retries and goes to the DLQ."""


class DecodeError(PoisonMessage):
    """The payload is not valid JSON (or is a null tombstone where a payload was expected)."""


class SchemaError(PoisonMessage):
    """The payload is JSON but fails validation against the handler's declared type."""


class WorkerLost(PoisonMessage):
    """The worker process died while this record was being handled, ``crash_limit`` times.

    A segfault, an out-of-memory kill or ``os._exit`` in a handler raises nothing the retry
    policy could catch, so the crash counter (``streamq.crashes``) dead-letters the record
    instead of letting it kill every next owner.
    """


class Reject(_RecordError):
    """Raise from a handler to dead-letter the current record at once, without retries.

    Like dramatiq's ``Retry``, this is control flow, not a crash: it is not logged as an error.
    """

    def __init__(self, reason: str = "rejected by handler", **coords: Any) -> None:
        super().__init__(reason, **coords)


class PartitionHalted(StreamqError):
    """A run ended while partitions were halted at a record they could not get past.

    That happens with ``dlq=False`` and a record that exhausted its retries. The halted
    records were not committed: the next run starts at them again.
    """


class ShutdownTimeout(StreamqError):
    """Handlers were still running when ``shutdown_timeout`` ran out.

    The unfinished records were not committed and will be redelivered on the next start.
    """


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an error that ends a command or a worker."""
    if isinstance(exc, ConfigError | UnknownTopicOrPartition):
        return EXIT_USAGE
    if isinstance(exc, ShutdownTimeout):
        return EXIT_SHUTDOWN_TIMEOUT
    if isinstance(exc, PartitionHalted):
        return EXIT_HALTED
    if isinstance(exc, MemberFenced):
        return EXIT_FENCED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else EXIT_RUNTIME
    return EXIT_RUNTIME
