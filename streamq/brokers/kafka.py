"""``kafka://host:port[,host:port][?librdkafka.key=value...]``: Apache Kafka via confluent-kafka.

Defaults streamq changes from librdkafka's, and why:

- ``enable.auto.commit=false`` and ``enable.auto.offset.store=false``: offsets are committed
  only after processing, explicitly. Turning either back on is refused (arroyo does the
  same), since librdkafka would then commit records that were fetched but never handled.
- ``partition.assignment.strategy=cooperative-sticky``: a rebalance moves only the partitions
  that change owner; the others keep flowing (KIP-429).
- ``fetch.queue.backoff.ms=10`` (default 1000): measured here, the default caps a drain at
  about 0.26M records/s; 10 ms lets the raw loop reach about 1.3M/s.
- ``session.timeout.ms=10000`` (default 45000): a dead member's partitions move in seconds.
- ``max.poll.interval.ms=30000`` (default 300000): the poll thread never waits on handlers,
  only on a revoke's drain (``revoke_timeout``), so a short interval is safe; it must exceed
  ``revoke_timeout`` by 3 s, which is checked.
- ``queued.max.messages.kbytes``: a quarter of ``worker_max_in_flight_bytes`` (default 16 MB
  instead of 64 MB), so librdkafka's own prefetch counts inside the worker's memory bound.
- Producer: ``enable.idempotence=true`` (no duplicates or reordering from retries),
  ``partitioner=murmur2_random`` (the Java client's partitioner, so keys land where every
  other Kafka client and streamq's other brokers put them), ``linger.ms=5``,
  ``message.timeout.ms=60000`` (a failed delivery surfaces within a minute).

Any other librdkafka setting passes through from ``Settings.kafka`` or the URL query.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .. import deadline
from ..credentials import redact_url, remember_mapping
from ..dispatch import Lease, bind_confluent, kafka_messages
from ..errors import (
    BrokerError,
    BrokerUnavailable,
    CommitFailed,
    ConfigError,
    MemberFenced,
    UnknownTopicOrPartition,
)
from ..logs import get_logger
from ..message import Headers, Message, TopicPartition
from ..settings import Settings
from .base import Rebalance, RecordMetadata, wait_until_reachable

try:
    import confluent_kafka as ck
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    if "confluent_kafka" not in str(exc):
        raise
    raise ImportError("streamq[kafka] is not installed: pip install 'streamq[kafka]'") from exc

# The compiled core reads confluent-kafka's records by field when their layout is the one it
# knows (checked here, once); otherwise, and in the twin, through their methods.
FIELD_READS = bind_confluent(ck.Message)

__all__ = ["KafkaBroker"]

log = get_logger("streamq.kafka")

MIN_LIBRDKAFKA = (2, 10, 0)

_REFUSED = {
    "enable.auto.commit": "streamq commits only after processing; auto-commit would commit "
    "records that were fetched but never handled",
    "enable.auto.offset.store": "streamq stores offsets only after processing",
}
_OWNED = {
    "bootstrap.servers": "put the brokers in the URL: kafka://host:port,host:port",
    "group.id": "the group comes from @app.handler(group=...) or the app name",
    "group.instance.id": "use the instance_id setting",
    "group.protocol": "use the group_protocol setting",
}
# Under KIP-848 the group coordinator owns these; librdkafka refuses the consumer otherwise.
_BROKER_SIDE_UNDER_KIP848 = {
    "session.timeout.ms": "group.consumer.session.timeout.ms",
    "heartbeat.interval.ms": "group.consumer.heartbeat.interval.ms",
    "partition.assignment.strategy": "group.consumer.assignors",
    "group.protocol.type": "group.consumer.assignors",
}
# A commit refused with these: the group replaced this member for good.
_FENCED = {KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID}
_UNAVAILABLE = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT_QUEUE,
}
# Errors after which readiness reports the broker unreachable (a single dropped connection,
# _TRANSPORT, is routine: librdkafka reconnects).
_DISCONNECTED = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
_UNKNOWN = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}


def _check_client_version() -> None:
    version = ck.libversion()[0]
    parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    if parts < MIN_LIBRDKAFKA:
        raise ConfigError(
            f"confluent-kafka bundles librdkafka {version}; streamq needs >= 2.10 "
            "(older ones rewind offsets under cooperative-sticky): pip install -U confluent-kafka"
        )


def translate(exc: BaseException, what: str) -> BrokerError:
    """Map a confluent-kafka error onto streamq's error tree."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    text = err.str() if err is not None else str(exc)
    code = err.code() if err is not None else None
    if code in _UNAVAILABLE:
        return BrokerUnavailable(f"{what}: {text}")
    if code in _UNKNOWN:
        return UnknownTopicOrPartition(f"{what}: {text}")
    return BrokerError(f"{what}: {text}")


class _SharedConfigNoise(logging.Filter):
    """Drop librdkafka's notes that a shared setting does not apply to this client.

    One passthrough dict feeds consumers and producers, so those notes are expected.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("property and will be ignored by this" in text and "CONFWARN" in text)


# librdkafka's lines all come through one format string, so the shared per-call-site limit
# (streamq.logs) bounds the whole client at 5 lines per 10 s during an outage.
_client_log = get_logger("streamq.librdkafka")
_client_log.addFilter(_SharedConfigNoise())
_error_log = get_logger("streamq.kafka.errors")


def _on_error(err: KafkaError) -> None:
    level = logging.ERROR if err.fatal() else logging.WARNING
    _error_log.log(level, "kafka client error: %s", err.str())


class KafkaBroker:
    def __init__(self, url: str, settings: Settings) -> None:
        _check_client_version()
        self.url = url
        self.settings = settings
        parts = urlsplit(url)
        userinfo, _, self.bootstrap = parts.netloc.rpartition("@")
        if not self.bootstrap:
            raise ConfigError(
                f"broker: {redact_url(url)!r} names no host; expected kafka://host:port"
            )
        options = dict(parse_qsl(parts.query)) | settings.kafka
        if userinfo:
            options |= self._sasl_login(userinfo, options)
        remember_mapping(options)
        self.passthrough = self._passthrough(options)

    @staticmethod
    def _sasl_login(userinfo: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``kafka://user:password@host`` as SASL settings.

        The user must choose the protocol: a default of SASL_PLAINTEXT would send the
        password in clear without anyone having decided so.
        """
        if "security.protocol" not in options or "sasl.mechanism" not in options:
            raise ConfigError(
                "broker: a kafka:// URL with user:password@ needs security.protocol "
                "(SASL_SSL, or SASL_PLAINTEXT on a trusted network) and sasl.mechanism "
                "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) in the URL's query or the kafka setting"
            )
        user, _, password = userinfo.partition(":")
        return {"sasl.username": unquote(user), "sasl.password": unquote(password)}

    @staticmethod
    def _passthrough(options: Mapping[str, Any]) -> dict[str, Any]:
        problems = []
        for key, value in options.items():
            if key in _REFUSED and str(value).lower() not in ("false", "0"):
                problems.append(f"kafka.{key}: refused: {_REFUSED[key]}")
            elif key in _OWNED:
                problems.append(f"kafka.{key}: set by streamq: {_OWNED[key]}")
            elif key.startswith("on_") or key in ("error_cb", "logger", "stats_cb"):
                problems.append(f"kafka.{key}: callbacks are owned by streamq")
        if problems:
            raise ConfigError(problems)
        return dict(options)

    def client_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "error_cb": _on_error,
            "logger": _client_log,
            **self.passthrough,
        }

    def consumer_config(self, group: str) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "group.id": group,
            "client.id": f"streamq-{group}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": s.auto_offset_reset,
            "enable.partition.eof": False,
            "fetch.queue.backoff.ms": 10,
            "queued.max.messages.kbytes": max(1024, s.worker_max_in_flight_bytes // 4096),
            "max.poll.interval.ms": 30_000,
        }
        if s.group_protocol == "consumer":
            config["group.protocol"] = "consumer"
            broker_side = [k for k in _BROKER_SIDE_UNDER_KIP848 if k in self.passthrough]
            if broker_side:
                raise ConfigError(
                    [f"kafka.{k}: not allowed with group_protocol='consumer' (KIP-848): the "
                     f"broker sets it ({_BROKER_SIDE_UNDER_KIP848[k]})" for k in broker_side]
                )  # fmt: skip
        else:
            config |= {
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 3_000,
            }
        if s.instance_id:
            config["group.instance.id"] = s.instance_id
        config |= self.client_config()
        floor = int((s.revoke_timeout + 3) * 1000)
        if int(config["max.poll.interval.ms"]) < floor:
            raise ConfigError(
                f"kafka.max.poll.interval.ms: {config['max.poll.interval.ms']} is too short for "
                f"revoke_timeout={s.revoke_timeout}s: the poll thread waits up to that long on a "
                f"revoke; use at least {floor}"
            )
        return config

    def producer_config(self) -> dict[str, Any]:
        return {
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "message.timeout.ms": 60_000,
        } | self.client_config()

    def consumer(self, group: str, settings: Settings) -> KafkaConsumer:
        return KafkaConsumer(self, group)

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def admin(self) -> KafkaAdmin:
        return KafkaAdmin(self)


def _ck(tp: TopicPartition, offset: int | None = None) -> Any:
    if offset is None:
        return ck.TopicPartition(tp.topic, tp.partition)
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def _ours(parts: Sequence[Any]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


def to_message(m: Any) -> Message:
    """A confluent record without error as a Message (the hot loop in poll_batch inlines it)."""
    return Message(
        m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]
    )


def wait_for_broker(probe: Callable[[float], object], where: str, deadline_s: float) -> None:
    wait_until_reachable(
        probe, broker="Kafka", where=where, deadline_s=deadline_s, errors=(KafkaException,),
        describe=lambda exc: translate(exc, "metadata"),
    )  # fmt: skip


class KafkaConsumer:
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
        # From the settings, never from the client inside a callback (see _apply).
        strategy = str(config.get("partition.assignment.strategy", ""))
        self._cooperative = config.get("group.protocol") == "consumer" or "cooperative" in strategy
        # Liveness (B4): lanes start no handler past the lease's deadline, which a watchdog
        # thread moves on while this process runs. See _watch.
        session_ms, heartbeat_ms = self._group_timeouts(config)
        self._stall_s = session_ms / 2000
        self._grace_s = min(session_ms / 1000, max(2.0, 2 * heartbeat_ms / 1000))
        self._lease = Lease(None, time.monotonic() + self._stall_s)
        self._suspect_until = 0.0
        self._stopped = threading.Event()
        self._watchdog = threading.Thread(
            target=self._watch, name=f"streamq-liveness[{group}]", daemon=True
        )
        self._watchdog.start()

    def _group_timeouts(self, config: dict[str, Any]) -> tuple[float, float]:
        """Session and heartbeat interval: the client's, or under KIP-848 the broker's."""
        if config.get("group.protocol") != "consumer":
            return float(config["session.timeout.ms"]), float(config["heartbeat.interval.ms"])
        found = {"group.consumer.session.timeout.ms": 45000.0,
                 "group.consumer.heartbeat.interval.ms": 5000.0}  # fmt: skip
        try:
            from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

            admin = AdminClient(self._broker.client_config())
            meta = admin.list_topics(timeout=5)
            resource = ConfigResource(ConfigResource.Type.BROKER, str(next(iter(meta.brokers))))
            entries = admin.describe_configs([resource])[resource].result(5)
            for name in found:
                if name in entries and entries[name].value:
                    found[name] = float(entries[name].value)
        except Exception as exc:  # the defaults are safe: a longer stall goes unnoticed
            log.debug("group %s: broker group timeouts unknown (%s)", self._group, exc)
        return (found["group.consumer.session.timeout.ms"],
                found["group.consumer.heartbeat.interval.ms"])  # fmt: skip

    def _watch(self) -> None:
        """Keep the liveness lease ahead of the clock while this process runs.

        A process frozen (SIGSTOP, a VM pause, swap) for longer than the session was
        removed from the group: its partitions belong to someone else now. On waking, its
        threads run again at once, and librdkafka reports the loss only a little later; the
        lanes would go on handling records of partitions they lost. So the lease is never
        more than half a session ahead; after a stall of that length it is left expired
        until the group confirms the assignment (a rebalance callback) or, when no loss is
        reported within a grace of two heartbeats, until it is clear none happened.
        """
        last = time.monotonic()
        while not self._stopped.wait(0.1):
            now = time.monotonic()
            if now - last > self._stall_s:
                self._suspect_until = now + self._grace_s
                log.warning(
                    "group %s: this process stood still for %.1fs (more than half the session "
                    "timeout); starting no handler until the group confirms its partitions",
                    self._group, now - last,
                )  # fmt: skip
            last = now
            if now >= self._suspect_until:
                self._lease.deadline = now + self._stall_s

    def _confirm(self) -> None:
        """A rebalance callback: the group told this member what it owns now."""
        self._suspect_until = 0.0

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
        self._confirm()
        tps = _ours(parts)
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
        self._confirm()
        tps = _ours(parts)
        self._call(1, tps)
        self._assignment.difference_update(tps)
        self._checked_at = 0.0
        self._unassign(consumer, parts)

    def _lost(self, consumer: Any, parts: list[Any]) -> None:
        self._confirm()
        tps = _ours(parts)
        self._call(2, tps)
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
        _error_log.warning(
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
        if err.code() in _DISCONNECTED:
            self._down = True
        if err.fatal():
            self._fatal = err
        _on_error(err)

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
                _, high = self._consumer.get_watermark_offsets(_ck(tp), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                out[tp] = max(0, high - position)
        return out

    def unfetched(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition with records past the consumer's position: (position, how many).

        The runner asks about partitions it does not pause and has nothing in flight for:
        one that stays behind at the same position is not being fetched at all. The end
        offsets come from the broker in one request (ListOffsets, LATEST: the last stable
        offset under read_committed); the position is librdkafka's own, which steps over
        transaction markers, or, until a record was consumed since the assignment, the
        group's committed offset (one more request).
        """
        if not tps:
            return {}
        timeout = min(1.0, self._settings.broker_timeout)  # on the poll thread
        out: dict[TopicPartition, tuple[int, int]] = {}
        try:
            ends = {
                TopicPartition(e.topic, e.partition): e.offset
                for e in self._consumer.offsets_for_times(
                    [ck.TopicPartition(tp.topic, tp.partition, -1) for tp in tps], timeout=timeout
                )
                if e.error is None and e.offset > 0
            }
            if not ends:
                return {}
            unknown = []
            for p in self._consumer.position([_ck(tp) for tp in ends]):
                tp = TopicPartition(p.topic, p.partition)
                if p.offset >= 0:
                    if ends[tp] > p.offset:
                        out[tp] = (p.offset, ends[tp] - p.offset)
                else:
                    unknown.append(tp)
            if unknown:
                earliest = self._settings.auto_offset_reset == "earliest"
                for c in self._consumer.committed([_ck(tp) for tp in unknown], timeout=timeout):
                    tp = TopicPartition(c.topic, c.partition)
                    if c.offset >= 0:
                        start = c.offset
                    elif earliest:
                        start = self._consumer.get_watermark_offsets(c, cached=True)[0]
                        if start is None or start < 0:
                            continue
                    else:
                        continue  # latest: nothing before the end is this group's
                    if ends[tp] > start:
                        out[tp] = (start, ends[tp] - start)
        except KafkaException:
            return {}
        return out

    def lease_of(self, tp: TopicPartition) -> Lease:
        """One liveness lease for every partition: see ``_watch``."""
        return self._lease

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
            committed = self._consumer.committed([_ck(tp) for tp in others], timeout=2)
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
            raise self._fenced(self._fatal)
        try:
            raw = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise translate(exc, "consume") from None
        if raw and self._down:
            self._down = False
        return kafka_messages(raw, self._record_error)

    def _record_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise self._fenced(err)
        if err.code() == KafkaError._PARTITION_EOF:
            return
        _error_log.warning("group %s: %s", self._group, err.str())

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._flow(self._consumer.pause, tps)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._flow(self._consumer.resume, tps)

    def _flow(self, op: Callable[[list[Any]], None], tps: Sequence[TopicPartition]) -> None:
        try:
            op([_ck(tp) for tp in tps])
        except KafkaException as exc:  # a partition revoked meanwhile: nothing to pause
            log.debug("group %s: pause/resume of %s: %s", self._group, tps, exc)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_ck(tp, offset))
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
        parts = [_ck(tp, offset) for tp, offset in offsets.items()]
        try:
            if not sync:
                self._consumer.commit(offsets=parts, asynchronous=True)
                return
            result = self._consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and (err.fatal() or err.code() in _FENCED):
                raise self._fenced(self._fatal or err) from None
            raise CommitFailed(f"group {self._group}: {translate(exc, 'commit')}") from None
        if result:
            failed = [f"{p.topic}[{p.partition}]: {p.error.str()}" for p in result if p.error]
            if failed:
                raise CommitFailed(f"group {self._group}: commit refused for " + "; ".join(failed))

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        try:
            found = self._consumer.committed([_ck(tp) for tp in tps], timeout=10)
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
        self._stopped.set()
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


class KafkaProducer:
    """Idempotent producer whose futures resolve from delivery reports.

    A background thread serves delivery callbacks, so ``send(...).result()`` works from any
    thread and the worker's DLQ path can await the acknowledgement.
    """

    def __init__(self, broker: KafkaBroker) -> None:
        self._producer = ck.Producer(broker.producer_config())
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="streamq-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        fut: Future[RecordMetadata] = Future()

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                fut.set_exception(translate(KafkaException(err), f"delivery to {topic}"))
            else:
                fut.set_result(RecordMetadata(msg.topic(), msg.partition(), msg.offset()))

        kwargs: dict[str, Any] = {"on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return fut
            except BufferError:  # the local queue is full: wait for deliveries to free it
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise translate(exc, f"produce to {topic}") from None

    def flush(self, timeout: float | None = None) -> int:
        return int(self._producer.flush(-1 if timeout is None else timeout))

    def close(self) -> None:
        if not self._closed.is_set():
            self._producer.flush(30)
            self._closed.set()
            self._thread.join(5)


class KafkaAdmin:
    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker
        self._admin = AdminClient(broker.client_config())
        self._timeout = broker.settings.broker_timeout

    def create_topic(self, name: str, partitions: int) -> None:
        self._reachable()
        futures = self._admin.create_topics([NewTopic(name, partitions)], request_timeout=15)
        try:
            futures[name].result(self._timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigError(f"topic {name!r} already exists") from None
            raise translate(exc, f"create topic {name}") from None

    def list_topics(self) -> dict[str, int]:
        self._reachable()
        meta = self._admin.list_topics(timeout=self._timeout)
        return {
            name: len(t.partitions) for name, t in meta.topics.items() if not name.startswith("__")
        }

    def _reachable(self) -> None:
        wait_for_broker(
            lambda t: self._admin.list_topics(timeout=t),
            self._broker.bootstrap,
            self._timeout,
        )

    def close(self) -> None:
        pass
