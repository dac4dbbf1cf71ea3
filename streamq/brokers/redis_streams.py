"""``redis://host:port/db[?partitions=P]``: Redis Streams with Kafka-style partitions.

Key layout (all names are plain strings; ``<g>`` group, ``<t>`` topic, ``<p>`` partition):

- ``<t>:<p>``                          the partition's stream. Entry fields: ``v`` value,
  ``k`` key, ``h`` headers (length-prefixed, byte-exact), ``t`` producer timestamp (ms).
- ``streamq:topic:<t>``                hash ``{partitions: P}``: written by ``topics create``
  (or the first producer), read by producers and consumers.
- ``streamq:members:<g>:<t>``          sorted set: member id -> heartbeat expiry (ms). Members
  compute the same assignment from the live ones: partition p goes to member p % n.
- ``streamq:lease:<g>:<t>:<p>``        string: the owner's token, ``SET NX PX``, renewed.

Why leases: a Redis consumer group alone hands one stream's entries to any member, which
breaks ordering. A member reads a partition only while it holds the lease; one that cannot
renew stops the partition at once (lanes check a local deadline before each handler). A new
owner first claims the partition's pending entries (XAUTOCLAIM) and handles them in ID order,
then reads new ones. Acknowledgements are fenced (``lua/ack.lua``): XACK names no consumer, so
only the lease holder's acks go through.

Offsets: an entry ID ``ms-seq`` maps to the integer ``ms << 20 | seq``, so the worker's offset
tracker orders Redis entries exactly like Kafka offsets.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from ..credentials import redact_url, redis_client, scrub
from ..dispatch import Lease, redis_messages
from ..errors import (
    BrokerError,
    BrokerUnavailable,
    CommitFailed,
    ConfigError,
    UnknownTopicOrPartition,
)
from ..logs import get_logger
from ..message import Headers, Message, TopicPartition
from ..murmur2 import partition_for_key
from ..settings import Settings
from .base import Rebalance, RecordMetadata, wait_until_reachable

try:
    import redis
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    if "redis" not in str(exc):
        raise
    raise ImportError("streamq[redis] is not installed: pip install 'streamq[redis]'") from exc

__all__ = ["RedisBroker", "id_to_offset", "offset_to_id"]

log = get_logger("streamq.redis")

_SEQ_BITS = 20
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# Seconds between checks for entries trimmed before the group read them (two XINFO per
# owned partition each time).
TRIM_CHECK_EVERY = 5.0
# Lanes stop starting handlers this long before the lease could expire on the server.
_LEASE_MARGIN = 0.2


def id_to_offset(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return (int(ms) << _SEQ_BITS) | int(seq or 0)


def offset_to_id(offset: int) -> str:
    return f"{offset >> _SEQ_BITS}-{offset & _SEQ_MASK}"


def encode_headers(headers: Headers) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw = name.encode()
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">I", len(value)) + value
    return bytes(out)


def decode_headers(blob: bytes | None) -> Headers | None:
    if not blob:
        return None
    out: Headers = []
    i = 0
    while i < len(blob):
        (n,) = struct.unpack_from(">H", blob, i)
        name = blob[i + 2 : i + 2 + n].decode()
        i += 2 + n
        (m,) = struct.unpack_from(">I", blob, i)
        out.append((name, blob[i + 4 : i + 4 + m]))
        i += 4 + m
    return out


def entry_to_message(topic: str, partition: int, entry_id: bytes, fields: Any) -> Message:
    """One stream entry as a Message; the timestamp is the producer's, else the ID's ms."""
    offset = id_to_offset(entry_id)
    stamp = fields.get(b"t")
    return Message(
        topic, partition, offset, fields.get(b"k"), fields.get(b"v"),
        decode_headers(fields.get(b"h")),
        int(stamp) if stamp is not None else offset >> _SEQ_BITS,
    )  # fmt: skip


def _id_text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _script(name: str) -> str:
    return resources.files("streamq.brokers").joinpath("lua", name).read_text()


def stream_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def lease_key(group: str, tp: TopicPartition) -> str:
    return f"streamq:lease:{group}:{tp.topic}:{tp.partition}"


class RedisBroker:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.default_partitions = 4
        if "partitions" in query:
            raw = query.pop("partitions")[-1]
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(
                    f"{redact_url(url)}: partitions must be a positive integer, got {raw!r}"
                )
            self.default_partitions = int(raw)
        self.client_url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()

    def client(self) -> redis.Redis:
        try:
            client: redis.Redis = redis_client(
                self.client_url,
                self.settings.redis_secret,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"broker: {scrub(str(exc))}") from None
        return client

    def partitions(self, client: redis.Redis, topic: str, *, create: bool) -> int:
        """Partition count of ``topic``, creating its metadata with the default if asked."""
        with self._lock:
            known = self._partitions.get(topic)
        if known is not None:
            return known
        key = f"streamq:topic:{topic}"
        try:
            if create:
                client.hsetnx(key, "partitions", self.default_partitions)
            raw = client.hget(key, "partitions")
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis at {redact_url(self.client_url)}: {exc}") from None
        if raw is None:
            raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
        with self._lock:
            self._partitions[topic] = int(raw)
        return int(raw)

    def consumer(self, group: str, settings: Settings) -> RedisConsumer:
        return RedisConsumer(self, group)

    def producer(self) -> RedisProducer:
        return RedisProducer(self)

    def admin(self) -> RedisAdmin:
        return RedisAdmin(self)


def wait_for_redis(client: redis.Redis, where: str, deadline_s: float) -> None:
    """Until Redis answers; refused credentials end the wait at once (retrying cannot help)."""
    shown = redact_url(where)

    def probe(timeout: float) -> None:
        try:
            client.ping()
        except (AuthenticationError, NoPermissionError) as exc:
            raise ConfigError(f"redis at {shown} refused the credentials: {exc}") from None

    wait_until_reachable(
        probe, broker="Redis", where=shown, deadline_s=deadline_s, errors=_UNAVAILABLE
    )


class _Owned:
    """A partition this member holds: its lease, read cursor and unacknowledged entries."""

    __slots__ = ("cursor", "delivered", "last_id", "lease")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.cursor = b"0"  # first our own pending entries (after XAUTOCLAIM), then ">"
        self.last_id = b"0"  # last entry handed to the worker
        self.delivered: deque[int] = deque()  # offsets; entry IDs follow from them


class RedisConsumer:
    def __init__(self, broker: RedisBroker, group: str) -> None:
        self._broker = broker
        self._settings = broker.settings
        self._group = group
        self._r = broker.client()
        self._member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._ttl = self._settings.lease_ttl
        self._ttl_ms = int(self._ttl * 1000)
        self._renew = self._r.register_script(_script("renew.lua"))
        self._release = self._r.register_script(_script("release.lua"))
        self._ack = self._r.register_script(_script("ack.lua"))
        self._topics: dict[str, int] = {}
        self._owned: dict[TopicPartition, _Owned] = {}
        self._waiting: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._lost_by_fence: list[TopicPartition] = []
        self._next_beat = 0.0
        self._caught_up = False
        self._checked_at = 0.0
        self._trims_checked_at = 0.0
        self._callbacks: tuple[Rebalance, Rebalance, Rebalance] | None = None
        self._closed = False
        # (event, topic, partition) -> count, exported as metrics (streamq.metrics)
        self.events: Counter[tuple[str, str, str]] = Counter()

    # -- membership --------------------------------------------------------------------------

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        wait_for_redis(self._r, self._broker.client_url, self._settings.broker_timeout)
        self._warn_eviction_policy()
        self._callbacks = (on_assign, on_revoke, on_lost)
        for topic in topics:
            self._topics[topic] = self._broker.partitions(self._r, topic, create=True)
            for p in range(self._topics[topic]):
                self._ensure_group(stream_key(TopicPartition(topic, p)))
        self._beat()

    def _warn_eviction_policy(self) -> None:
        try:
            policy = self._r.config_get("maxmemory-policy").get("maxmemory-policy")
        except (ResponseError, *_UNAVAILABLE):
            return  # CONFIG may be disabled on managed Redis
        if policy not in (None, "noeviction", b"noeviction"):
            log.warning(
                "redis maxmemory-policy is %s: under memory pressure Redis may evict streams "
                "and their consumer groups, losing records; set it to noeviction",
                policy.decode() if isinstance(policy, bytes) else policy,
            )

    def _ensure_group(self, key: str) -> None:
        """Create the group at the stream's start, with a valid read counter.

        ENTRIESREAD counts what a trim removed before the group existed as read: it was never
        this group's to lose. With the counter valid from the start, Redis keeps counting
        entries a later trim removes unread, which ``_check_trims`` reports.
        """
        try:
            try:
                info = self._r.xinfo_stream(key)
                gone = int(info["entries-added"]) - int(info["length"])
            except ResponseError:  # no stream yet
                gone = 0
            self._r.xgroup_create(key, self._group, id="0", mkstream=True, entries_read=gone)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis: cannot create group on {key}: {exc}") from None
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    def _beat(self) -> None:
        """Heartbeat, renew leases, and follow the assignment; callbacks run here."""
        assert self._callbacks is not None
        on_assign, on_revoke, on_lost = self._callbacks
        started = time.monotonic()
        self._next_beat = started + self._ttl / 3
        try:
            live = self._heartbeat()
            lost = self._renew_leases(started)
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: heartbeat failed: {exc}") from None
        lost = list(dict.fromkeys(lost + self._lost_by_fence))  # both paths may name one
        self._lost_by_fence = []
        if lost:
            self._drop(lost)
            on_lost(lost)
        target = {
            TopicPartition(topic, p)
            for topic, count in self._topics.items()
            for p in range(count)
            if live[topic] and live[topic][p % len(live[topic])] == self._member
        }
        revoke = [tp for tp in self._owned if tp not in target]
        if revoke:
            on_revoke(revoke)
            self._release_leases(revoke)
        acquired = self._acquire([tp for tp in sorted(target) if tp not in self._owned])
        if acquired:
            on_assign(acquired)
        if started - self._trims_checked_at >= TRIM_CHECK_EVERY:
            self._trims_checked_at = started
            self._check_trims()

    def _check_trims(self) -> None:
        """Find entries trimmed away before this group ever read them (H2), and say so once.

        Redis counts what a group read (``entries-read``) against what the stream ever got
        (``entries-added``): their difference, the group's ``lag``, keeps counting entries a
        trim removed unread, forever. So while the group has not reached the stream's head,
        lag minus the entries still there is what was lost; once it is caught up, all of the
        lag is. The total is kept per partition in Redis, so each loss is reported once,
        whichever member sees it. Costs two XINFO per owned partition every few seconds.
        """
        tps = list(self._owned)
        pipe = self._r.pipeline(transaction=False)
        for tp in tps:
            pipe.xinfo_stream(stream_key(tp))
            pipe.xinfo_groups(stream_key(tp))
        try:
            replies = pipe.execute(raise_on_error=False)
        except _UNAVAILABLE:
            return  # the next beat says so; this check simply waits for the next round
        for i, tp in enumerate(tps):
            stream, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(stream, Exception) or isinstance(groups, Exception):
                continue
            ours = [g for g in groups if g["name"] in (self._group, self._group.encode())]
            if ours and ours[0].get("lag") is not None:
                self._note_trimmed(tp, stream, ours[0])

    def _note_trimmed(self, tp: TopicPartition, stream: Any, group: Any) -> None:
        """Report the growth of this partition's trimmed-unread total.

        Needs the group's read counter valid (groups streamq creates have it; after an
        XGROUP SETID without ENTRIESREAD Redis estimates it, counting what was trimmed as
        read, and such a loss goes unreported).
        """
        last = group["last-delivered-id"]
        first = stream["first-entry"][0] if stream.get("first-entry") else None
        if stream["last-generated-id"] == last or not stream["length"]:
            lost = int(group["lag"])  # caught up: nothing left to deliver
            where = f"before {_id_text(last)}"
        elif first is not None and id_to_offset(first) > id_to_offset(last):
            lost = int(group["lag"]) - int(stream["length"])  # all that is left is unread
            where = f"between {_id_text(last)} and {_id_text(first)}"
        else:
            return  # between the two: wait until one of them holds
        if lost <= 0:
            return
        key = f"streamq:trimmed:{self._group}:{tp.topic}:{tp.partition}"
        try:
            before = self._r.set(key, lost, get=True)
        except (ResponseError, *_UNAVAILABLE):
            return
        new = lost - int(before or 0)
        if new <= 0:
            return
        self.events[("trimmed_unread", tp.topic, str(tp.partition))] += new
        log.error(
            "group %s: %d entries of %s[%d] (%s) were trimmed from the stream before the "
            "group read them: they are lost (XADD MAXLEN or XTRIM outran the consumers; raise "
            "redis_maxlen or leave it unset)",
            self._group, new, tp.topic, tp.partition, where,
        )  # fmt: skip

    def _heartbeat(self) -> dict[str, list[str]]:
        now_ms = int(time.time() * 1000)
        pipe = self._r.pipeline(transaction=False)
        for topic in self._topics:
            key = f"streamq:members:{self._group}:{topic}"
            pipe.zadd(key, {self._member: now_ms + self._ttl_ms})
            pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.zrange(key, 0, -1)
        replies = pipe.execute()
        return {
            topic: sorted(m.decode() for m in replies[i * 3 + 2])
            for i, topic in enumerate(self._topics)
        }

    def _renew_leases(self, started: float) -> list[TopicPartition]:
        if not self._owned:
            return []
        owned = list(self._owned.items())
        pipe = self._r.pipeline(transaction=False)
        for tp, own in owned:
            self._renew(keys=[lease_key(self._group, tp)], args=[own.lease.token, self._ttl_ms],
                        client=pipe)  # fmt: skip
        results = pipe.execute()
        deadline = started + self._ttl * (1 - _LEASE_MARGIN)
        lost = []
        for (tp, own), ok in zip(owned, results, strict=True):
            if ok:
                own.lease.deadline = deadline
            else:
                lost.append(tp)
        return lost

    def _release_leases(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            own = self._owned.pop(tp, None)
            self._paused.discard(tp)
            if own is None:
                continue
            own.lease.deadline = 0.0
            with contextlib.suppress(*_UNAVAILABLE):  # if Redis is away, it expires by itself
                self._release(keys=[lease_key(self._group, tp)], args=[own.lease.token])

    def _drop(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            own = self._owned.pop(tp, None)
            if own is not None:
                own.lease.deadline = 0.0
            self._paused.discard(tp)

    def _acquire(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        acquired = []
        self._waiting = set()
        for tp in tps:
            token = f"{self._member}:{uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            try:
                ok = self._r.set(lease_key(self._group, tp), token, nx=True, px=self._ttl_ms)
                if ok:
                    self._reclaim(tp)
            except _UNAVAILABLE as exc:
                raise BrokerUnavailable(f"redis: {exc}") from None
            if not ok:
                self._waiting.add(tp)
                continue
            deadline = started + self._ttl * (1 - _LEASE_MARGIN)
            self._owned[tp] = _Owned(Lease(token, deadline))
            acquired.append(tp)
        return acquired

    def _reclaim(self, tp: TopicPartition) -> None:
        """Take over every pending entry of the partition; ``poll_batch`` reads them first."""
        key = stream_key(tp)
        start = "0-0"
        while True:
            try:
                # Not JUSTID: redis-py drops the paging cursor from JUSTID replies.
                reply = self._r.xautoclaim(
                    key, self._group, self._member, min_idle_time=0, start_id=start, count=1000
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._recreate_group(key)
                    return
                raise BrokerError(f"redis: XAUTOCLAIM {key}: {exc}") from None
            cursor, deleted = reply[0], reply[2] if len(reply) > 2 else []
            if deleted:
                self._report_trimmed(tp, deleted)
            if cursor in (b"0-0", "0-0"):
                return
            start = cursor

    def _report_trimmed(self, tp: TopicPartition, ids: Sequence[bytes]) -> None:
        self.events[("lost_to_trim", tp.topic, str(tp.partition))] += len(ids)
        log.error(
            "group %s: %d pending entries of %s[%d] were trimmed from the stream before they "
            "were handled and cannot be delivered: %s",
            self._group, len(ids), tp.topic, tp.partition,
            ", ".join(_id_text(i) for i in ids[:20]),
        )  # fmt: skip

    def _recreate_group(self, key: str) -> None:
        topic, _, partition = key.rpartition(":")
        self.events[("stream_reset", topic, partition)] += 1
        log.error(
            "group %s: the consumer group on %s is gone (Redis restarted without persistence, "
            "or the key was deleted); recreating it from the start of the stream",
            self._group,
            key,
        )
        self._ensure_group(key)

    @property
    def settled(self) -> bool:
        if self._waiting:
            return False
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            self._caught_up = self._others_caught_up()
        return self._caught_up

    def _others_caught_up(self) -> bool:
        others = [
            TopicPartition(t, p)
            for t, n in self._topics.items()
            for p in range(n)
            if TopicPartition(t, p) not in self._owned
        ]
        try:
            for tp in others:
                for info in self._r.xinfo_groups(stream_key(tp)):
                    ours = info["name"] in (self._group, self._group.encode())
                    if ours and (info.get("pending") or info.get("lag")):
                        return False
        except (ResponseError, *_UNAVAILABLE):
            return False
        return True

    def lease_of(self, tp: TopicPartition) -> Lease | None:
        own = self._owned.get(tp)
        return own.lease if own is not None else None

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        if time.monotonic() >= self._next_beat or self._lost_by_fence:
            self._beat()
        readable = [tp for tp in self._owned if tp not in self._paused]
        if not readable:
            time.sleep(min(timeout, max(0.0, self._next_beat - time.monotonic())))
            return []
        streams = {stream_key(tp): self._owned[tp].cursor for tp in readable}
        history = any(c != b">" for c in streams.values())
        reply: Any
        try:
            reply = self._r.xreadgroup(
                self._group, self._member, streams,  # type: ignore[arg-type]
                count=max(1, max_records // len(readable)),
                block=None if history else max(1, int(timeout * 1000)),
            )  # fmt: skip
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise BrokerError(f"redis: XREADGROUP: {exc}") from None
            for tp in readable:
                self._ensure_group_after_loss(tp)
            return []
        except _UNAVAILABLE as exc:
            # A reply lost in transit left entries in our PEL that never reached us: after
            # reconnecting, re-read our own pending entries past the last one we saw.
            for own in self._owned.values():
                own.cursor = own.last_id
            raise BrokerUnavailable(f"redis: XREADGROUP: {exc}") from None
        return self._messages(reply or [])

    def _ensure_group_after_loss(self, tp: TopicPartition) -> None:
        self._recreate_group(stream_key(tp))
        own = self._owned.get(tp)
        if own is not None:
            own.cursor = b"0"

    def _messages(self, reply: list[Any]) -> list[Message]:
        out: list[Message] = []
        for raw_key, entries in reply:
            key = raw_key.decode()
            topic, _, p = key.rpartition(":")
            tp = TopicPartition(topic, int(p))
            own = self._owned.get(tp)
            if own is None:
                continue
            if own.cursor != b">":
                if not entries:
                    own.cursor = b">"  # our pending entries are all delivered: now new ones
                    continue
                own.cursor = entries[-1][0]
            if not entries:
                continue
            own.last_id = entries[-1][0]
            trimmed: list[Any] = []
            offsets: list[int] = []
            out += redis_messages(
                topic, tp.partition, entries, offsets, trimmed, _SEQ_BITS, decode_headers
            )
            own.delivered.extend(offsets)
            if trimmed:
                self._report_trimmed(tp, trimmed)
                self._ack_ids(tp, own, trimmed)
        return out

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update(tp for tp in tps if tp in self._owned)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._owned:
            raise UnknownTopicOrPartition(f"cannot seek {tp}: not owned by this member")
        try:
            self._r.xgroup_setid(stream_key(tp), self._group, offset_to_id(max(0, offset - 1)))
        except (ResponseError, *_UNAVAILABLE) as exc:
            raise BrokerError(f"redis: seek {tp}: {exc}") from None

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        count = self._broker.partitions(self._r, topic, create=False)
        out: dict[TopicPartition, int | None] = {}
        for p in range(count):
            tp = TopicPartition(topic, p)
            found: Any = self._r.xrange(stream_key(tp), f"{timestamp_ms}-0", "+", count=1)
            out[tp] = id_to_offset(found[0][0]) if found else None
        return out

    # -- commits -----------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        """XACK, fenced by the lease, every delivered entry before each position."""
        refused = []
        for tp, position in offsets.items():
            own = self._owned.get(tp)
            if own is None:
                refused.append(tp)
                continue
            ids: list[str] = []
            delivered = own.delivered
            while delivered and delivered[0] < position:
                ids.append(offset_to_id(delivered.popleft()))
            if ids and not self._ack_ids(tp, own, ids):
                refused.append(tp)
        if refused:
            raise CommitFailed(f"group {self._group}: no longer owns {sorted(refused)}")

    def _ack_ids(self, tp: TopicPartition, own: _Owned, ids: Sequence[bytes | str]) -> bool:
        key, lkey = stream_key(tp), lease_key(self._group, tp)
        try:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                result = self._ack(keys=[lkey, key], args=[own.lease.token, self._group, *chunk])
                if result == -1:
                    log.warning(
                        "group %s: lease on %s[%d] is gone (expired, or Redis lost it): "
                        "acknowledgements refused; whoever owns it next handles those entries",
                        self._group, tp.topic, tp.partition,
                    )  # fmt: skip
                    self._lost_by_fence.append(tp)
                    return False
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XACK: {exc}") from None
        return True

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        raise BrokerError("redis streams have no committed offsets; see pending entries")

    def lag(self, positions: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """Entries not yet delivered to the group plus those delivered but not acknowledged.

        One pipelined XINFO GROUPS for the partitions asked about (Redis >= 7 reports the
        undelivered count; where it cannot tell, after trims, the partition is left out).
        """
        tps = list(positions)
        pipe = self._r.pipeline(transaction=False)
        for tp in tps:
            pipe.xinfo_groups(stream_key(tp))
        try:
            replies = pipe.execute(raise_on_error=False)
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XINFO GROUPS: {exc}") from None
        out: dict[TopicPartition, int] = {}
        for tp, infos in zip(tps, replies, strict=True):
            if isinstance(infos, Exception):
                continue
            for info in infos:
                if info["name"] in (self._group, self._group.encode()):
                    if info.get("lag") is not None:
                        out[tp] = int(info["lag"]) + int(info["pending"])
                    break
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._callbacks is not None and self._owned:
                owned = list(self._owned)
                self._callbacks[1](owned)
                self._release_leases(owned)
            for topic in self._topics:
                self._r.zrem(f"streamq:members:{self._group}:{topic}", self._member)
        except _UNAVAILABLE as exc:
            log.warning("group %s: leaving cleanly failed (%s); leases expire by themselves",
                        self._group, exc)  # fmt: skip
        finally:
            self._r.close()


class RedisProducer:
    """XADD through a background thread that pipelines what accumulated since its last trip."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r = broker.client()
        self._queue: queue.Queue[tuple[str, dict[str, bytes], Future[RecordMetadata], str] | None]
        self._queue = queue.Queue()
        self._idle = threading.Condition()
        self._outstanding = 0
        self._round_robin = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="streamq-redis-producer",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> Future[RecordMetadata]:
        count = self._broker.partitions(self._r, topic, create=True)
        if partition is None:
            if key is not None:
                partition = partition_for_key(key, count)
            else:
                self._round_robin += 1
                partition = self._round_robin % count
        elif not 0 <= partition < count:
            raise UnknownTopicOrPartition(
                f"{topic} has {count} partitions; no partition {partition}"
            )
        fields: dict[str, bytes] = {}
        if value is not None:
            fields["v"] = value
        if key is not None:
            fields["k"] = key
        if headers:
            fields["h"] = encode_headers(headers)
        if timestamp is not None:
            fields["t"] = str(timestamp).encode()
        if not fields:
            fields["v0"] = b""  # XADD needs one field: a tombstone with no key
        fut: Future[RecordMetadata] = Future()
        with self._idle:
            self._outstanding += 1
        self._queue.put((stream_key(TopicPartition(topic, partition)), fields, fut, topic))
        return fut

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[Any] = [first]
            stop = False
            while len(batch) < 1000:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # close() was called: write what came before it, then end
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            with self._idle:
                self._outstanding -= len(batch)
                self._idle.notify_all()
            if stop:
                return

    def _write(self, batch: list[Any]) -> None:
        """One pipeline for the batch; every future gets its own answer, whatever happens.

        The writer thread must outlive any error: a future never resolved would leave its
        sender (a DLQ write holding a partition, say) waiting forever.
        """
        maxlen = self._broker.settings.redis_maxlen
        try:
            pipe = self._r.pipeline(transaction=False)
            for key, fields, _, _ in batch:
                pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
            answers = pipe.execute(raise_on_error=False)
        except Exception as exc:
            kind = BrokerUnavailable if isinstance(exc, _UNAVAILABLE) else BrokerError
            for *_, fut, _ in batch:
                fut.set_exception(kind(f"redis: XADD: {exc}"))
            return
        for (key, _, fut, topic), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):  # this stream only: WRONGTYPE, OOM, ...
                fut.set_exception(BrokerError(f"redis: XADD to {key}: {answer}"))
                continue
            partition = int(key.rpartition(":")[2])
            fut.set_result(RecordMetadata(topic, partition, id_to_offset(answer)))

    def flush(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            return self._outstanding

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush(30)
            self._queue.put(None)
            self._thread.join(5)
            self._r.close()


class RedisAdmin:
    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r = broker.client()

    def create_topic(self, name: str, partitions: int) -> None:
        wait_for_redis(self._r, self._broker.client_url, self._broker.settings.broker_timeout)
        if not self._r.hsetnx(f"streamq:topic:{name}", "partitions", partitions):
            raise ConfigError(f"topic {name!r} already exists")

    def lag(self, group: str, topic: str) -> dict[TopicPartition, tuple[int | None, int]]:
        """Per partition: (entries not yet delivered to the group, delivered but unacked).

        From XINFO GROUPS; the first is None where Redis cannot tell (after XDEL/trims).
        """
        count = self._broker.partitions(self._r, topic, create=False)
        out: dict[TopicPartition, tuple[int | None, int]] = {}
        for p in range(count):
            tp = TopicPartition(topic, p)
            try:
                infos: Any = self._r.xinfo_groups(stream_key(tp))
            except ResponseError:  # the stream does not exist yet
                infos = []
            mine = [i for i in infos if i["name"] in (group, group.encode())]
            out[tp] = (mine[0].get("lag"), mine[0]["pending"]) if mine else (None, 0)
        return out

    def list_topics(self) -> dict[str, int]:
        wait_for_redis(self._r, self._broker.client_url, self._broker.settings.broker_timeout)
        out = {}
        for key in self._r.scan_iter(match="streamq:topic:*", count=500):
            name = key.decode().removeprefix("streamq:topic:")
            raw = self._r.hget(key, "partitions")
            if raw is not None:
                out[name] = int(raw)
        return out

    def close(self) -> None:
        self._r.close()
