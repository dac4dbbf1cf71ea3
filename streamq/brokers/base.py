"""The broker interface every backend implements; semantics are stated here, once.

Offsets. An offset names the *next* record to read. ``commit({tp: n})`` records that every
record of ``tp`` before ``n`` is done, so a restarted group resumes at ``n``. The worker only
ever commits the first offset not yet done (``streamq.offsets``): commits never pass an
unfinished record.

Assignment. ``subscribe`` joins the consumer group. The backend calls ``on_assign`` for
partitions it now owns and ``on_revoke`` for partitions it is about to give up, both from
inside ``poll_batch`` on the poll thread. During ``on_revoke`` the backend still owns the
partitions, so the worker drains them and commits synchronously there. ``on_lost`` reports
partitions already owned by someone else: nothing of theirs may be committed any more.

Pause. ``pause`` stops fetching from a partition without leaving the group; ``poll_batch``
must still be called (it drives heartbeats and rebalances) and simply returns nothing for
paused partitions. Pause state does not survive a revoke: a partition assigned again starts
unpaused, and the worker re-applies its own caps.

Threads. A backend's consumer is used from one thread only (the worker's poll thread). A
producer may be used from any thread.

Capabilities. Besides the group protocol, a consumer answers a few questions the runtime
asks for metrics and readiness (``lag``, ``unfetched``, ``take_failed_commits``,
``connected``, ``events``); each has a default here that means "nothing to report", so a
backend overrides only what its broker can tell. The backends subclass these classes to
inherit those defaults.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

from ..credentials import redact_url
from ..dispatch import Lease
from ..errors import BrokerUnavailable, ConfigError
from ..logs import get_logger
from ..message import Headers, Message, TopicPartition

if TYPE_CHECKING:
    from ..pipeline import Output
    from ..settings import Settings
    from .view import LogView

__all__ = [
    "Admin",
    "Backend",
    "Broker",
    "Delivered",
    "Lease",
    "ProducerBackend",
    "Rebalance",
    "RecordMetadata",
    "ShareBackend",
    "wait_until_reachable",
]

Rebalance = Callable[[list[TopicPartition]], None]
# What ``ProducerBackend.publish`` reports per record: (None, None) or (error, the record).
Delivered = Callable[[BaseException | None, "Output | None"], None]


class RecordMetadata(NamedTuple):
    """Where the broker stored a produced record."""

    topic: str
    partition: int
    offset: int


class Round:
    """A share group member's round in flight: how many of its records are not finished.

    The backend starts it with the records a poll returned (poll thread, between rounds);
    the runtime counts it down as records finish (event loop thread, during the round);
    ``done`` is set at zero, so a poll waiting for the round's end wakes once, then, not
    at every finished unit (a wake mid-round would fight the loop for the GIL).

    ``size`` is how many records the next poll may take: from ``least`` (what the handlers
    run at once, twice) it doubles while rounds end within ``_QUICK`` seconds, up to
    ``most``, and halves when one takes longer than ``_SLOW``. Cheap handlers then pay a
    round's fixed cost over many records, while slow ones keep what a member holds (and
    what its death sends back, and what it keeps from the other members) small.
    """

    __slots__ = ("_least", "_most", "_started", "done", "left", "size")

    _QUICK, _SLOW = 0.05, 0.5

    def __init__(self, least: int = 1, most: int = 1) -> None:
        self.left = 0
        self.done = threading.Event()
        self.done.set()
        self._least, self._most = least, max(least, most)
        self.size = least
        self._started = 0.0

    def start(self, records: int) -> None:
        now = time.monotonic()
        if self._started:  # the last round, which just ended: adapt the size
            took = now - self._started
            if took < self._QUICK and records >= self.size:
                self.size = min(self._most, self.size * 2)
            elif took > self._SLOW:
                self.size = max(self._least, self.size // 2)
        self._started = now if records else 0.0
        self.left = records
        if records:
            self.done.clear()

    def finished(self, records: int) -> None:
        self.left -= records
        if self.left <= 0:
            self.done.set()


class Backend(Protocol):
    """One group member's consumer."""

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None: ...

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` records from unpaused owned partitions, in log order each."""

    def pause(self, tps: Sequence[TopicPartition]) -> None: ...

    def resume(self, tps: Sequence[TopicPartition]) -> None: ...

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        """Commit positions; raises ``CommitFailed`` for partitions no longer owned."""

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        """First offset at or after ``timestamp_ms`` per partition; None past the end."""

    def lease_of(self, tp: TopicPartition) -> Lease | None:
        """The lease guarding ``tp``, for brokers whose ownership can lapse silently (Redis).

        Lanes start no handler for ``tp`` once ``time.monotonic()`` passes ``deadline``; the
        backend moves the deadline forward on every renewal. None: the broker fences itself.
        """

    @property
    def settled(self) -> bool:
        """True once this member holds its whole current assignment (no rebalance pending)."""

    def close(self) -> None:
        """Leave the group; pending revokes run first, so the worker can commit."""

    # -- capabilities, with the default "nothing to report" ----------------------------------

    def lag(self, positions: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """Records past each position, for the lag gauge; partitions it cannot tell left out.

        Sampled on the poll thread, so it must be cheap.
        """
        return {}

    def unfetched(
        self, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]] | None:
        """Of ``tps``, those with records past the fetch position: (position, how many).

        For clients that can leave an owned, unpaused partition unfetched (Kafka). None
        when the broker could not tell: not the same as nothing waiting.
        """
        return {}

    def take_failed_commits(self) -> dict[TopicPartition, int]:
        """Positions whose asynchronous commit failed since the last call (Kafka)."""
        return {}

    @property
    def connected(self) -> bool:
        """False while the client knows the broker is unreachable (readiness)."""
        return True

    def fetch_positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where the application will read next, past what the client skips itself.

        Kafka steps over transaction markers, which take offsets but hold no record: a group
        that committed its last record's offset + 1 would look one behind forever.
        """
        return {}

    def offset_text(self, offset: int) -> str:
        """An offset as this broker's users know it, for log lines (Redis: the entry ID)."""
        return str(offset)

    @property
    def events(self) -> Counter[tuple[str, str, str]]:
        """(event, topic, partition) -> count of broker events, exported as metrics (Redis)."""
        return Counter()

    # -- state kept with the ownership of a partition ------------------------------------------

    def save_state(self, tp: TopicPartition, offset: int, state: str) -> None:
        """Store ``state`` and the position ``offset`` with this member's ownership of ``tp``.

        Refused (``CommitFailed``, or ``MemberFenced``) unless this member owns ``tp`` at the
        broker now, so a member that lost ``tp`` while frozen cannot overwrite its heir's
        state: the schedule keeps its last fired ticks this way. Kafka: commit metadata
        (at most ``offset.metadata.max.bytes``, 4096 by default); Redis: a key written by a
        script that checks the lease.
        """
        raise ConfigError("this broker cannot keep state with a partition's ownership")

    def load_state(self, tp: TopicPartition) -> tuple[int | None, str | None]:
        """The position and state last saved for ``tp`` by any member (None: never)."""
        raise ConfigError("this broker cannot keep state with a partition's ownership")

    # -- exactly once ----------------------------------------------------------------------------

    #: Whether ``commit_transaction`` is served: ``guarantee="exactly_once"`` needs it.
    # A share group's member (``group_type="share"``): it reads every partition with the
    # others, in rounds (the next poll only once the last one is committed), records may be
    # redelivered with ``Message.attempt`` > 1, and ``commit`` acknowledges each delivered
    # record below the positions rather than moving a group position.
    share: ClassVar[bool] = False
    # share: whether the last poll returned a record delivered before (``attempt`` > 1)
    redelivered: bool = False
    # share: the round in flight, which the runtime counts down as records finish
    round: Round | None = None

    def acknowledge(self, tp: TopicPartition, records: Sequence[Message]) -> None:
        """Share groups: these records of ``tp`` are finished (handled, or dead-lettered).

        The next commit, or poll, sends that to the broker.
        """
        raise TypeError("only a share group's member acknowledges records alone")

    def reject(self, record: Message) -> None:
        """Share groups: ``record`` was dead-lettered; ``acknowledge`` rejects it, not accepts.

        Called from the event loop's thread once the DLQ write is acknowledged, before the
        record's completion reaches ``acknowledge``; the broker then never delivers it again
        and counts it as given up, not as handled.
        """
        raise TypeError("only a share group's member rejects records")

    transactional: ClassVar[bool] = False

    #: While caught up, commit once this many records finished, if below ``commit_every``:
    #: a commit whose cost grows with its records (Redis acknowledges each entry, on the
    #: poll thread, and the XACK holds Redis itself) is then better spread out. None: no cap.
    commit_records_cap: ClassVar[int | None] = None

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], outputs: Sequence[Output]
    ) -> None:
        """Publish ``outputs`` and commit ``offsets`` atomically: both or neither.

        Raises CommitFailed when neither happened (the runner keeps the outputs and tries
        again with its next commit) and MemberFenced when this member may never commit again.
        """
        raise ConfigError("guarantee='exactly_once': this broker cannot commit transactions")


class ShareBackend(Backend):
    """What every share group member refuses, said once.

    A share group has no positions to move, keeps no partition state, and cannot
    acknowledge inside a transaction.
    """

    share = True
    transactional = False
    # dead-lettered records (topic, partition, offset), rejected when acknowledged;
    # and the counts behind the streamq_share_records_* metrics, by event, topic, partition
    _rejected: set[tuple[str, int, int]]
    _events: Counter[tuple[str, str, str]]

    def lease_of(self, tp: TopicPartition) -> Lease | None:
        return None  # no member owns a partition

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise ConfigError(
            "a share group has no position to move: records are acknowledged one by one "
            "(replay into a classic group instead)"
        )

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], outputs: Sequence[Output]
    ) -> None:
        raise ConfigError("exactly_once is not available on a share group")

    def save_state(self, tp: TopicPartition, offset: int, state: str) -> None:
        raise ConfigError("a share group keeps no partition state")

    def reject(self, record: Message) -> None:
        self._rejected.add((record.topic, record.partition, record.offset))  # atomic (GIL)

    def _count(self, tp: TopicPartition, accepted: int, rejected: int) -> None:
        """Once per acknowledged unit, not per record."""
        part = str(tp.partition)
        if accepted:
            self._events[("share_accepted", tp.topic, part)] += accepted
        if rejected:
            self._events[("share_rejected", tp.topic, part)] += rejected


class ProducerBackend(Protocol):
    """A producer; ``send`` is safe from any thread."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        """Queue a record; the future resolves when the broker acknowledged it."""

    def publish(self, outputs: Sequence[Output], delivered: Delivered) -> None:
        """Queue records without a future each; ``delivered`` hears of every one.

        It is called once per record from the producer's own thread: ``(None, None)`` when
        acknowledged, ``(error, output)`` when refused. Handlers' outputs go this way (a
        future per record cost more than the send itself); this default serves any backend.
        If it raises, it queued none of them (the outbox counts on that).
        """
        for out in outputs:
            try:
                fut = self.send(out.topic, out.value, out.key, out.headers, out.partition)
            except Exception as exc:
                delivered(exc, out)
            else:
                fut.add_done_callback(_reporter(delivered, out))

    def flush(self, timeout: float | None = None) -> int:
        """Wait for queued records; returns how many are still unacknowledged."""

    def close(self) -> None: ...


class Admin(Protocol):
    def create_topic(self, name: str, partitions: int, *, compact: bool = False) -> None:
        """Create ``name``; ``compact``: keep the last record per key (where the broker can).

        Raises ConfigError when it exists.
        """

    def list_topics(self) -> dict[str, int]:
        """Topic name to partition count."""

    def topic_exists(self, name: str) -> bool:
        """One look, no retries (a background check must not wait out an outage)."""
        return name in self.list_topics()

    def close(self) -> None: ...


class Broker(Protocol):
    """A factory for one broker URL's clients."""

    url: str

    def consumer(self, group: str, settings: Settings) -> Backend: ...

    def share_consumer(self, group: str, settings: Settings, round_size: int) -> Backend:
        """A member of the share group ``group`` (``group_type="share"``).

        It takes about ``round_size`` records per poll at most: records taken and not yet
        started die with their member, so rounds stay near what the handlers run at once.
        """
        ...

    def producer(self) -> ProducerBackend: ...

    def admin(self) -> Admin: ...

    @property
    def client_url(self) -> str:
        """The server's URL without streamq's own options, for other clients of it."""
        return self.url

    def view(self) -> LogView:
        """The operator view (``brokers.view``): bounds, positions, ranged reads."""
        raise ConfigError(f"broker: {redact_url(self.url)!r} has no operator view")


def _reporter(delivered: Delivered, out: Output) -> Callable[[Future[RecordMetadata]], None]:
    def report(fut: Future[RecordMetadata]) -> None:
        exc = fut.exception()
        delivered(exc, None if exc is None else out)

    return report


def wait_until_reachable(
    probe: Callable[[float], object],
    *,
    broker: str,
    where: str,
    deadline_s: float,
    errors: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], object] = str,
) -> None:
    """Call ``probe(timeout)`` until it answers, with backoff and one log line per attempt.

    A starting worker or CLI command should say clearly that the broker is away and keep
    trying for a while, not print a traceback; after ``deadline_s`` it gives up with
    ``BrokerUnavailable``. Each probe gets a third of the time left, so retries fit inside.
    """
    log = get_logger(f"streamq.{broker.lower()}")
    deadline = time.monotonic() + deadline_s
    delay = 0.5
    while True:
        try:
            probe(max(0.5, min(5.0, (deadline - time.monotonic()) / 3)))
            return
        except errors as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"cannot reach {broker} at {where} after {deadline_s:.0f}s ({describe(exc)})"
                ) from None
            log.warning(
                "cannot reach %s at %s (%s); retrying in %.1fs, giving up in %.0fs",
                broker, where, describe(exc), min(delay, remaining), remaining,
            )  # fmt: skip
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 10.0)
