"""One Kafka group member: rebalance callbacks, fetching, commits, and progress queries.

The semantics are those of ``brokers.base.Backend``; what is Kafka's own is said where it is
done: why the callbacks assign themselves, how a fatal error fences the member, why closing
runs on a thread with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ... import deadline
from ...dispatch import Lease, kafka_messages
from ...errors import BrokerError, CommitFailed, ConfigError, MemberFenced, UnknownTopicOrPartition
from ...logs import get_logger
from ...message import Message, TopicPartition
from ..base import Backend, Rebalance
from .admin import group_timeouts
from .client import KafkaError, KafkaException, ck, from_ck, to_ck
from .errors import DISCONNECTED, FENCED, error_log, on_error, translate, wait_for_broker
from .liveness import Liveness
from .transactions import Transactions
from .wire import ShareWire

if TYPE_CHECKING:
    from ...pipeline import Output
    from .config import KafkaBroker

__all__ = ["KafkaConsumer", "read_batch"]

log = get_logger("streamq.kafka")


def read_batch(consumer: Any, max_records: int, timeout: float) -> list[Any]:
    """Up to ``max_records`` records, returning as soon as there is one.

    ``consume(n, timeout)`` returns only when it has ``n`` records or the timeout passed:
    below ``n`` records per timeout, every record waited for it (p50 52 ms, p99 101 ms from
    producer to handler at 1,000 records/s with a 0.1 s timeout). What is queued is taken
    at once; when nothing is, ``poll`` waits for the first record alone (0.9 ms and 7 ms).
    """
    batch = consumer.consume(max_records, 0)
    if batch:
        return batch  # type: ignore[no-any-return]
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]


class KafkaConsumer(Backend):
    def __init__(self, broker: KafkaBroker, group: str) -> None:
        self._broker = broker
        self._settings = broker.settings
        self._group = group
        config = broker.consumer_config(group)
        config["on_commit"] = self._on_commit
        config["error_cb"] = self._on_client_error
        self._consumer = ck.Consumer(config)
        self._down = False  # readiness: all brokers reported down, not reached since
        self._probed_at = 0.0
        self._topics: tuple[str, ...] = ()
        self._assignment: set[TopicPartition] = set()
        self._failed_commits: dict[TopicPartition, int] = {}
        self._assigned_once = False
        self._caught_up = False
        self._checked_at = 0.0
        self._callbacks: tuple[Rebalance, Rebalance, Rebalance] | None = None
        self._closed = False
        self._fatal: KafkaError | None = None  # from error_cb: raised by the next poll
        self._share_checked = False  # whether the broker was asked if the group is a share group
        self._transactions: Transactions | None = None  # guarantee="exactly_once"
        # From the settings, never from the client inside a callback (see _apply).
        strategy = str(config.get("partition.assignment.strategy", ""))
        self._cooperative = config.get("group.protocol") == "consumer" or "cooperative" in strategy
        # Liveness (B4): lanes start no handler past the lease's deadline (see Liveness).
        self._liveness = Liveness(group, *group_timeouts(broker, config, group))

    # -- membership --------------------------------------------------------------------------

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        wait_for_broker(
            lambda t: self._consumer.list_topics(timeout=t),
            self._broker.bootstrap,
            self._settings.broker_timeout,
        )
        self._topics = tuple(topics)
        self._warn_missing_topics()
        self._callbacks = (on_assign, on_revoke, on_lost)
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    def _warn_missing_topics(self) -> None:
        try:
            known = self._consumer.list_topics(timeout=5).topics
        except KafkaException:
            return
        missing = [t for t in self._topics if t not in known]
        if missing:
            log.warning(
                "group %s: topic(s) %s do not exist (yet); waiting for them to be created",
                self._group,
                ", ".join(missing),
            )

    # librdkafka calls these from inside consume(), on the poll thread. They must not raise:
    # an exception here would crash the client, so failures are logged instead.
    def _assigned(self, consumer: Any, parts: list[Any]) -> None:
        self._liveness.confirm()
        tps = from_ck(parts)
        self._assigned_once = True
        self._assignment.update(tps)
        self._checked_at = 0.0
        self._call(0, tps)
        self._apply(consumer.incremental_assign if self._cooperative else consumer.assign, parts)
        # librdkafka keeps an application pause through unassign and reassign; the runner
        # forgets its pauses with the assignment (C7). A partition paused for back-pressure,
        # revoked and given back to this member would otherwise never be fetched again.
        self._apply(consumer.resume, parts)

    def _revoked(self, consumer: Any, parts: list[Any]) -> None:
        self._liveness.confirm()
        tps = from_ck(parts)
        self._call(1, tps)
        self._assignment.difference_update(tps)
        self._checked_at = 0.0
        self._unassign(consumer, parts)

    def _lost(self, consumer: Any, parts: list[Any]) -> None:
        tps = from_ck(parts)
        self._call(2, tps)
        # Only now: the lanes of ``parts`` are flagged stopped. Confirming first let the
        # watchdog renew the lease while they could still start a handler.
        self._liveness.confirm()
        self._assignment.difference_update(tps)
        self._checked_at = 0.0
        self._unassign(consumer, parts)

    def _unassign(self, consumer: Any, parts: list[Any]) -> None:
        if self._cooperative:
            self._apply(consumer.incremental_unassign, parts)
        else:
            self._apply(lambda _: consumer.unassign(), parts)

    def _apply(self, op: Callable[[list[Any]], None], parts: list[Any]) -> None:
        """Assign or unassign here, in our callback, never leaving it to the client.

        When a callback does neither, confluent-kafka asks librdkafka for the rebalance
        protocol while holding the GIL, and that call can hang for good during a close
        (librdkafka #4041): every thread of the worker froze, the shutdown deadline too.
        """
        try:
            op(parts)
        except KafkaException as exc:
            log.warning("group %s: applying the rebalance failed: %s", self._group, exc)

    def _call(self, which: int, tps: list[TopicPartition]) -> None:
        if self._callbacks is None:
            return
        try:
            self._callbacks[which](tps)
        except Exception:
            log.exception("group %s: rebalance callback failed", self._group)

    def _on_commit(self, err: KafkaError | None, parts: list[Any]) -> None:
        """Served inside consume(), on the poll thread; failures go back to the runner."""
        failed = [p for p in parts or () if err is not None or p.error is not None]
        if not failed:
            return
        for p in failed:
            self._failed_commits[TopicPartition(p.topic, p.partition)] = p.offset
        error_log.warning(
            "group %s: asynchronous commit failed (%s); the next commit carries these "
            "positions again",
            self._group,
            (err or failed[0].error).str(),
        )

    def take_failed_commits(self) -> dict[TopicPartition, int]:
        """Positions whose asynchronous commit failed since the last call."""
        failed, self._failed_commits = self._failed_commits, {}
        return failed

    def _on_client_error(self, err: KafkaError) -> None:
        if err.code() in DISCONNECTED:
            self._down = True
        if err.fatal():
            self._fatal = err
        on_error(err)

    def _fenced(self, err: KafkaError) -> MemberFenced:
        """The one line a fenced member exits with: who fenced it, and what happens now."""
        text = err.str()
        # classic protocol: the old member is fenced by a newcomer with its instance id;
        # KIP-848: the newcomer is refused while the old one lives ("still used")
        if any(s in text.lower() for s in ("fenced", "instance id")):
            return MemberFenced(
                f"fenced: another process in group {self._group} uses this member's "
                f"instance_id {self._settings.instance_id!r}; stopping without committing "
                f"(give each process its own instance_id) [{text}]"
            )
        return MemberFenced(
            f"fatal Kafka error in group {self._group}, this member cannot continue: {text}"
        )

    @property
    def connected(self) -> bool:
        """False from an "all brokers down" error until a fetch or a metadata probe succeeds.

        librdkafka reconnects by itself and says so only by errors; readiness asks here,
        at most every two seconds with a short probe while down.
        """
        if self._down and time.monotonic() - self._probed_at >= 2.0:
            self._probed_at = time.monotonic()
            try:
                self._consumer.list_topics(timeout=0.5)
                self._down = False
            except KafkaException:
                pass
        return not self._down

    def lag(self, positions: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """Records past each committed position, from the high watermarks of the last fetch.

        ``cached=True`` asks librdkafka's own state, not the broker: no network call.
        """
        out: dict[TopicPartition, int] = {}
        for tp, position in positions.items():
            if position is None:
                continue
            try:
                _, high = self._consumer.get_watermark_offsets(to_ck(tp), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                out[tp] = max(0, high - position)
        return out

    def unfetched(
        self, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]] | None:
        """Per partition with records past the consumer's position: (position, how many).

        The runner asks about partitions it does not pause and has nothing in flight for:
        one that stays behind at the same position is not being fetched at all. The end
        offsets come from the broker in one request (ListOffsets, LATEST: the last stable
        offset under read_committed); the position is librdkafka's own, which steps over
        transaction markers, or, until a record was consumed since the assignment, the
        group's committed offset (one more request), or for a group new to the partition
        its start (ListOffsets, EARLIEST). None when the broker did not answer: the runner
        must not take that for "nothing waiting" (``--until-idle`` would stop a member
        whose first fetch is slow).
        """
        if not tps:
            return {}
        timeout = min(1.0, self._settings.broker_timeout)  # on the poll thread
        out: dict[TopicPartition, tuple[int, int]] = {}
        try:
            ends = self._list_offsets(tps, -1, timeout)
            if ends is None:
                return None
            ends = {tp: end for tp, end in ends.items() if end > 0}
            unknown = []
            for p in self._consumer.position([to_ck(tp) for tp in ends]) if ends else ():
                tp = TopicPartition(p.topic, p.partition)
                if p.offset >= 0:
                    if ends[tp] > p.offset:
                        out[tp] = (p.offset, ends[tp] - p.offset)
                else:
                    unknown.append(tp)
            if not unknown:
                return out
            fresh = []
            for c in self._consumer.committed([to_ck(tp) for tp in unknown], timeout=timeout):
                tp = TopicPartition(c.topic, c.partition)
                if c.offset >= 0:
                    if ends[tp] > c.offset:
                        out[tp] = (c.offset, ends[tp] - c.offset)
                elif self._settings.auto_offset_reset == "earliest":
                    fresh.append(tp)
                # latest: nothing before the end is this group's
            starts = self._list_offsets(fresh, -2, timeout) if fresh else {}
            if starts is None:
                return None
            for tp, start in starts.items():
                if ends[tp] > start:
                    out[tp] = (start, ends[tp] - start)
        except KafkaException:
            return None
        return out

    def _list_offsets(
        self, tps: Sequence[TopicPartition], at: int, timeout: float
    ) -> dict[TopicPartition, int] | None:
        """One ListOffsets request: ``at`` -1 for the end (LSO), -2 for the start."""
        found = self._consumer.offsets_for_times(
            [ck.TopicPartition(tp.topic, tp.partition, at) for tp in tps], timeout=timeout
        )
        if any(e.error is not None for e in found):
            return None
        return {TopicPartition(e.topic, e.partition): e.offset for e in found}

    def lease_of(self, tp: TopicPartition) -> Lease:
        """One liveness lease for every partition: see ``Liveness``."""
        return self._liveness.lease

    @property
    def settled(self) -> bool:
        """Assigned, and no other member's partition still lags (checked at most once a second).

        That second half is what makes ``--until-idle`` mean "the group caught up": a member
        does not count idle time while partitions of a member that died have not been
        reassigned yet.
        """
        if not self._assigned_once:
            return False
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            self._caught_up = self._others_caught_up()
        return self._caught_up

    def _others_caught_up(self) -> bool:
        try:
            topics = self._consumer.list_topics(timeout=2).topics
            others = [
                TopicPartition(t, p)
                for t in self._topics
                if t in topics
                for p in topics[t].partitions
                if TopicPartition(t, p) not in self._assignment
            ]
            if not others:
                return True
            committed = self._consumer.committed([to_ck(tp) for tp in others], timeout=2)
            for c in committed:
                low, high = self._consumer.get_watermark_offsets(
                    ck.TopicPartition(c.topic, c.partition), timeout=2
                )
                start = low if self._settings.auto_offset_reset == "earliest" else high
                if (c.offset if c.offset >= 0 else start) < high:
                    return False
            return True
        except KafkaException:
            return False

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        if self._fatal is not None:
            raise self._share_group_refusal(self._fatal) or self._fenced(self._fatal)
        try:
            raw = read_batch(self._consumer, max_records, timeout)
        except KafkaException as exc:
            raise translate(exc, "consume") from None
        # a record, not an error event (consume also returns those, transport errors among
        # them), shows the broker is back; an error event cleared this too (CI: /readyz
        # stayed 200 through an outage, or flapped back to 200)
        if raw and self._down and any(m.error() is None for m in raw):
            self._down = False
        return kafka_messages(raw, self._record_error)

    def _record_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise self._share_group_refusal(err) or self._fenced(err)
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL:
            refusal = self._share_group_refusal(err)
            if refusal is not None:
                raise refusal
        error_log.warning("group %s: %s", self._group, err.str())

    def _share_group_refusal(self, err: KafkaError) -> ConfigError | None:
        """The group is a share group: the broker refuses this member for good.

        Classic members are told "inconsistent group protocol" at every join, KIP-848 ones
        "the group id does not exist" as a fatal error; both also mean other things (members
        with other assignors; a deleted group), so the broker is asked, once.
        """
        if self._share_checked or not (
            err.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL or "does not exist" in err.str()
        ):
            return None
        self._share_checked = True
        wire = ShareWire(self._broker.bootstrap, self._broker.passthrough, 10.0)
        try:
            share = wire.describe(self._group)
        except (BrokerError, ConfigError):
            return None
        finally:
            wire.close()
        if share is None:
            return None
        return ConfigError(
            f"group {self._group!r} is a share group on this broker ({len(share.members)} live "
            f"member(s)); a classic member cannot join it ({err.str()}): give it another "
            "group name, or stop them first"
        )

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._flow(self._consumer.pause, [to_ck(tp) for tp in tps])

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        parts = [to_ck(tp) for tp in tps]
        if self._flow(self._consumer.resume, parts):
            self._wake_fetcher(parts)

    def _wake_fetcher(self, parts: list[Any]) -> None:
        """Seek resumed partitions to where the client resumes them, so fetching restarts now.

        librdkafka does not wake a broker's thread on resume: a broker whose partitions were
        all paused fetched again only when its thread woke on its own, up to a second later
        (``rd_kafka_max_block_ms``). A worker over its in-flight bound pauses every
        partition, so each round of back-pressure stalled it for that second (Apache Kafka
        4.2, confluent-kafka 2.16: 0.97 s from resume to the next record; with bounds of
        2,000 records a partition and 4,000 a worker, 8,700 records/s where the handlers did
        600,000). A seek moves a partition's fetch state, which wakes its broker. The
        position is the client's own resume point (the record after the last one consumed),
        so nothing is skipped or fetched twice; one never consumed has no position and
        resumes from its committed offset, which the client looks up itself (and that
        lookup wakes the broker).
        """
        try:
            for p in self._consumer.position(parts):
                if p.error is None and p.offset >= 0:
                    self._consumer.seek(p)
        except KafkaException as exc:  # revoked meanwhile: the next owner fetches it
            log.debug("group %s: waking the fetch of %s: %s", self._group, from_ck(parts), exc)

    def _flow(self, op: Callable[[list[Any]], None], parts: list[Any]) -> bool:
        try:
            op(parts)
        except KafkaException as exc:  # a partition revoked meanwhile: nothing to pause
            log.debug("group %s: pause/resume of %s: %s", self._group, from_ck(parts), exc)
            return False
        return True

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(to_ck(tp, offset))
        except KafkaException as exc:
            raise translate(exc, f"seek {tp.topic}[{tp.partition}]") from None

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        try:
            meta = self._consumer.list_topics(topic, timeout=self._settings.broker_timeout)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
            query = [
                ck.TopicPartition(topic, p, timestamp_ms) for p in meta.topics[topic].partitions
            ]
            found = self._consumer.offsets_for_times(query, timeout=self._settings.broker_timeout)
        except KafkaException as exc:
            raise translate(exc, "offsets_for_times") from None
        return {
            TopicPartition(f.topic, f.partition): (f.offset if f.offset >= 0 else None)
            for f in found
        }

    # -- commits -----------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        parts = [to_ck(tp, offset) for tp, offset in offsets.items()]
        try:
            if not sync:
                self._consumer.commit(offsets=parts, asynchronous=True)
                return
            result = self._consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and (err.fatal() or err.code() in FENCED):
                raise self._fenced(self._fatal or err) from None
            raise CommitFailed(f"group {self._group}: {translate(exc, 'commit')}") from None
        if result:
            failed = [f"{p.topic}[{p.partition}]: {p.error.str()}" for p in result if p.error]
            if failed:
                raise CommitFailed(f"group {self._group}: commit refused for " + "; ".join(failed))

    transactional = True

    def fetch_positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            found = self._consumer.position([to_ck(tp) for tp in tps])
        except KafkaException:
            return {}
        return {TopicPartition(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], outputs: Sequence[Output]
    ) -> None:
        if self._transactions is None:
            self._transactions = Transactions(self._broker, self._group, self._settings.instance_id)
        self._transactions.commit(self._consumer, offsets, outputs)

    def save_state(self, tp: TopicPartition, offset: int, state: str) -> None:
        """A synchronous commit carrying ``state`` as its metadata.

        The coordinator checks the member's generation (its epoch under KIP-848), so only
        the owner's commit is taken.
        """
        part = ck.TopicPartition(tp.topic, tp.partition, offset, metadata=state)
        try:
            result = self._consumer.commit(offsets=[part], asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and (err.fatal() or err.code() in FENCED):
                raise self._fenced(self._fatal or err) from None
            raise CommitFailed(f"group {self._group}: {translate(exc, 'commit')}") from None
        failed = [p.error.str() for p in result or () if p.error]
        if failed:
            raise CommitFailed(f"group {self._group}: state of {tp} refused: {failed[0]}")

    def load_state(self, tp: TopicPartition) -> tuple[int | None, str | None]:
        try:
            found = self._consumer.committed([to_ck(tp)], timeout=10)
        except KafkaException as exc:
            raise translate(exc, "committed") from None
        f = found[0]
        return (f.offset if f.offset >= 0 else None), (f.metadata or None)

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        try:
            found = self._consumer.committed([to_ck(tp) for tp in tps], timeout=10)
        except KafkaException as exc:
            raise translate(exc, "committed") from None
        return {
            TopicPartition(f.topic, f.partition): (f.offset if f.offset >= 0 else None)
            for f in found
        }

    def close(self) -> None:
        """Leave the group, waiting at most ``shutdown_timeout`` for the broker.

        librdkafka's close runs the revoke callback (the worker commits there) and then waits
        for the group leave; a coordinator caught mid-rebalance, or a broker that stopped
        answering, can keep it waiting for good. A stop must not hang: past the deadline the
        member is left to expire after its session, like a crashed one, with its commits made.
        """
        if self._closed:
            return
        self._closed = True
        self._liveness.stop()
        if self._transactions is not None:
            self._transactions.close()
        failed: list[BaseException] = []

        def leave() -> None:
            try:
                # Revoke on this thread before close(): a rebalance callback served inside
                # close() can hang in rd_kafka_rebalance_protocol() while holding the GIL
                # (librdkafka #4041; seen here when a peer left during this member's close),
                # which freezes every thread of the process.
                # Not for a static member: unsubscribing leaves the group, and its partitions
                # would move instead of waiting for its restart.
                if not self._settings.instance_id:
                    self._consumer.unsubscribe()
                    until = time.monotonic() + min(2.0, timeout / 2)
                    while self._assignment and time.monotonic() < until:
                        self._consumer.consume(1, 0.05)  # a record here is redelivered later
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                failed.append(exc)

        timeout = self._settings.shutdown_timeout
        # The last resort for that hang: a C thread, which needs no GIL, dumps every
        # thread's stack and exits (code 1) if the close has not returned by then.
        token = deadline.arm(timeout + 10)
        closer = threading.Thread(target=leave, name=f"streamq-close[{self._group}]", daemon=True)
        closer.start()
        closer.join(timeout)
        if not closer.is_alive():
            deadline.disarm(token)
        if closer.is_alive():
            log.warning(
                "group %s: leaving the group did not finish within %.0fs; the broker will "
                "expire this member after session.timeout.ms",
                self._group,
                self._settings.shutdown_timeout,
            )
        elif failed:
            log.warning("group %s: close failed: %s", self._group, failed[0])
