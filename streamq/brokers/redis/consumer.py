"""One Redis group member: membership, leases, reading with XREADGROUP, fenced acks.

The semantics are those of ``brokers.base.Backend``. What Redis adds: members heartbeat in
a registry and compute the same assignment from the live ones; a member reads a partition
only while it holds the partition's lease (``SET NX PX``, renewed by ``lua/renew.lua``); a new
owner first claims the pending entries (XAUTOCLAIM); acks go through ``lua/ack.lua``, which
checks the lease token and XACKs in one step.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from ...dispatch import Lease, redis_messages
from ...errors import (
    BrokerError,
    BrokerUnavailable,
    CommitFailed,
    ConfigError,
    UnknownTopicOrPartition,
)
from ...logs import get_logger
from ...message import Message, TopicPartition
from ..base import Backend, Rebalance
from .admin import group_infos
from .client import NoScriptError, ResponseError
from .entries import (
    SEQ_BITS,
    decode_headers,
    id_to_offset,
    offset_to_id,
    read_unparsed,
    stream_replies,
)
from .errors import UNAVAILABLE, wait_for_redis
from .keys import lease_key, members_key, share_key, state_key, stream_key
from .transactions import Transactions
from .trims import TrimWatch

if TYPE_CHECKING:
    from ...pipeline import Output
    from .config import RedisBroker

__all__ = ["RedisConsumer"]

log = get_logger("streamq.redis")

# Lanes stop starting handlers this long before the lease could expire on the server.
_LEASE_MARGIN = 0.2
# Seconds between heartbeats that only follow joins and leaves (RedisConsumer._follow).
_FOLLOW_INTERVAL = 0.5
# With many partitions a poll reads a turn of them, at least this many records each.
_MIN_PER_STREAM = 100
_entry_id = operator.itemgetter(0)


def script(name: str) -> str:
    return resources.files("streamq.brokers.redis").joinpath("lua", name).read_text()


class _Owned:
    """A partition this member holds: its lease, read cursor and unacknowledged entries."""

    __slots__ = ("cursor", "delivered", "ids", "last_id", "lease")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.cursor = b"0"  # first our own pending entries (after XAUTOCLAIM), then ">"
        self.last_id = b"0"  # last entry handed to the worker
        self.delivered: deque[int] = deque()  # offsets, for comparing with positions
        # the same entries' IDs as Redis gave them: formatting an ID from its offset at each
        # XACK cost 0.4 us per record (a tenth of a drain's per-record time on Redis). Both
        # deques change together, through ``below`` and ``take`` only.
        self.ids: deque[bytes] = deque()

    def below(self, position: int) -> list[bytes]:
        """The IDs of the delivered entries before ``position``, still held."""
        return list(itertools.islice(self.ids, self._count_below(position)))

    def take(self, position: int) -> list[bytes]:
        """The IDs of the delivered entries before ``position``, no longer held."""
        n = self._count_below(position)
        drop, pop = self.delivered.popleft, self.ids.popleft
        for _ in range(n):
            drop()
        return [pop() for _ in range(n)]

    def _count_below(self, position: int) -> int:
        n = 0
        for offset in self.delivered:  # in order: the first at or past ``position`` ends it
            if offset >= position:
                break
            n += 1
        return n


class RedisConsumer(Backend):
    def __init__(self, broker: RedisBroker, group: str) -> None:
        self._broker = broker
        self._settings = broker.settings
        self._group = group
        self._r = broker.client()
        read_unparsed(self._r)  # its XREADGROUP replies: see stream_replies
        self._member = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._ttl = self._settings.lease_ttl
        self._ttl_ms = int(self._ttl * 1000)
        self._renew = self._r.register_script(script("renew.lua"))
        self._release = self._r.register_script(script("release.lua"))
        self._ack = self._r.register_script(script("ack.lua"))
        self._save_state = self._r.register_script(script("state.lua"))
        self._transactions = Transactions(
            broker, self._r, group, self._r.register_script(script("commit.lua"))
        )
        self._topics: dict[str, int] = {}
        self._owned: dict[TopicPartition, _Owned] = {}
        self._waiting: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._window = 0  # where the next turn of partitions starts (_poll_window)
        self._lost_by_fence: list[TopicPartition] = []
        self._next_beat = 0.0
        self._next_follow = 0.0
        self._live: dict[str, list[str]] = {}  # topic -> live members at the last heartbeat
        self._caught_up = False
        self._checked_at = 0.0
        self._callbacks: tuple[Rebalance, Rebalance, Rebalance] | None = None
        self._closed = False
        # (event, topic, partition) -> count, exported as metrics (streamq.metrics)
        self._events: Counter[tuple[str, str, str]] = Counter()
        self._trims = TrimWatch(self._r, group, self._events)

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
        self._claim_group_type()
        self._beat()

    def _claim_group_type(self) -> None:
        """Refuse to join a group whose live members are of the other type.

        A classic member and a share member of one group would read the same streams with
        XREADGROUP, one under leases and one without: each would take entries the other
        expects to own. Kafka refuses the mix at the broker; here the share members mark
        the group (``share_key``) and the first member of an empty group sets its type.
        """
        mine = "share" if self.share else "classic"
        now_ms = int(time.time() * 1000)
        try:
            marked = "share" if self._r.exists(share_key(self._group)) else "classic"
            live = sum(
                int(self._r.zcount(members_key(self._group, t), now_ms, "+inf"))
                for t in self._topics
            )
            if marked != mine and live:
                raise ConfigError(
                    f"group {self._group!r} is a {marked} group with {live} live member(s); "
                    f"a {mine} member would take entries they expect to own: give it another "
                    "group name, or stop them first"
                )
            if mine == "share":
                self._r.set(share_key(self._group), "1")
            elif marked == "share":
                self._r.delete(share_key(self._group))
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: reading the group's type: {exc}") from None

    def _warn_eviction_policy(self) -> None:
        try:
            policy = self._r.config_get("maxmemory-policy").get("maxmemory-policy")
        except (ResponseError, *UNAVAILABLE):
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
        entries a later trim removes unread, which ``TrimWatch.check`` reports.
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
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    def _beat(self) -> None:
        """Heartbeat, renew leases, and follow the assignment; callbacks run here."""
        assert self._callbacks is not None
        on_lost = self._callbacks[2]
        started = time.monotonic()
        self._next_beat = started + self._ttl / 3
        self._next_follow = started + _FOLLOW_INTERVAL
        try:
            live = self._heartbeat()
            lost = self._renew_leases(started)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: heartbeat failed: {exc}") from None
        lost = list(dict.fromkeys(lost + self._lost_by_fence))  # both paths may name one
        self._lost_by_fence = []
        if lost:
            self._drop(lost)
            on_lost(lost)
        self._follow_assignment(live)
        self._trims.maybe_check(started, list(self._owned))

    def _follow(self) -> None:
        """Between beats, a heartbeat alone: a member that joined or left is seen at once.

        Leases are renewed every third of ``lease_ttl``; waiting that long to see a new
        member too made a rebalance take two of those (about 7 s with the default: a
        second worker of ``--workers 2`` started work after the first had drained most of
        a 60,000-record backlog alone).
        """
        self._next_follow = time.monotonic() + _FOLLOW_INTERVAL
        try:
            live = self._heartbeat()
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: heartbeat failed: {exc}") from None
        if live != self._live or self._waiting:
            self._follow_assignment(live)

    def _follow_assignment(self, live: dict[str, list[str]]) -> None:
        """Give up what the live members' assignment gives others, take what it gives us."""
        assert self._callbacks is not None
        on_assign, on_revoke, _ = self._callbacks
        self._live = live
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

    def _heartbeat(self) -> dict[str, list[str]]:
        now_ms = int(time.time() * 1000)
        pipe = self._r.pipeline(transaction=False)
        for topic in self._topics:
            key = members_key(self._group, topic)
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
            with contextlib.suppress(*UNAVAILABLE):  # if Redis is away, it expires by itself
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
            except UNAVAILABLE as exc:
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
                self._trims.report_lost(tp, deleted)
            if cursor in (b"0-0", "0-0"):
                return
            start = cursor

    def _recreate_group(self, key: str) -> None:
        topic, _, partition = key.rpartition(":")
        self._events[("stream_reset", topic, partition)] += 1
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
        except (ResponseError, *UNAVAILABLE):
            return False
        return True

    @property
    def events(self) -> Counter[tuple[str, str, str]]:
        return self._events

    def lease_of(self, tp: TopicPartition) -> Lease | None:
        own = self._owned.get(tp)
        return own.lease if own is not None else None

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        """One XREADGROUP, two with many partitions (``_poll_window``), each entry once."""
        now = time.monotonic()
        if now >= self._next_beat or self._lost_by_fence:
            self._beat()
        elif now >= self._next_follow:
            self._follow()
        readable = [tp for tp in self._owned if tp not in self._paused]
        if not readable:
            due = min(self._next_beat, self._next_follow)
            time.sleep(min(timeout, max(0.0, due - time.monotonic())))
            return []
        if max_records // len(readable) < _MIN_PER_STREAM and len(readable) > 1:
            found = self._poll_window(readable, max_records)
            if found:
                return found
        return self._read(readable, max_records, timeout)

    def _poll_window(self, readable: list[TopicPartition], max_records: int) -> list[Message]:
        """Many partitions: a turn of them, ``_MIN_PER_STREAM`` records each at least.

        An XREADGROUP over every stream with ``max_records`` split among them reads a few
        records per stream for the cost of all of them (measured: 256 partitions at 0.07x
        the raw loop); a rotating window keeps the poll at ``max_records`` and each stream's
        read worth its cost. Without BLOCK: when the window has nothing, the caller reads
        them all, blocking.
        """
        k = max(1, max_records // _MIN_PER_STREAM)
        start = self._window % len(readable)
        self._window = start + k
        window = (readable[start:] + readable[:start])[:k]
        return self._read(window, max_records, 0.0)

    def _read(
        self, readable: list[TopicPartition], max_records: int, timeout: float
    ) -> list[Message]:
        streams = {stream_key(tp): self._owned[tp].cursor for tp in readable}
        # no BLOCK for a history read, or for timeout 0 (Redis times a BLOCK out only on its
        # next cron tick, 1/hz s later: a caller with a deadline of its own sleeps itself)
        history = timeout <= 0 or any(c != b">" for c in streams.values())
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
        except UNAVAILABLE as exc:
            # A reply lost in transit left entries in our PEL that never reached us: after
            # reconnecting, re-read our own pending entries past the last one we saw.
            for own in self._owned.values():
                own.cursor = own.last_id
            raise BrokerUnavailable(f"redis: XREADGROUP: {exc}") from None
        return self._messages(reply)

    def _ensure_group_after_loss(self, tp: TopicPartition) -> None:
        self._recreate_group(stream_key(tp))
        own = self._owned.get(tp)
        if own is not None:
            own.cursor = b"0"

    def _messages(self, reply: Any) -> list[Message]:
        out: list[Message] = []
        for raw_key, entries in stream_replies(reply):
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
                topic, tp.partition, entries, offsets, trimmed, SEQ_BITS, decode_headers
            )
            own.delivered.extend(offsets)
            if trimmed:
                gone = set(trimmed)
                own.ids.extend(e[0] for e in entries if e[0] not in gone)
                self._trims.report_lost(tp, trimmed)
                self._ack_ids([(tp, own, trimmed)])
            else:
                own.ids.extend(map(_entry_id, entries))
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
        except (ResponseError, *UNAVAILABLE) as exc:
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
        """XACK, fenced by the lease, every delivered entry before each position.

        One script call per partition, all of them in one pipelined round trip: a member
        with 64 partitions made 64 round trips in a row per commit, its largest cost.
        """
        refused = []
        acks = []
        for tp, position in offsets.items():
            own = self._owned.get(tp)
            if own is None:
                refused.append(tp)
                continue
            ids = own.take(position)
            if ids:
                acks.append((tp, own, ids))
        refused += self._ack_ids(acks)
        if refused:
            raise CommitFailed(f"group {self._group}: no longer owns {sorted(refused)}")

    def _ack_ids(
        self, acks: Sequence[tuple[TopicPartition, _Owned, Sequence[bytes | str]]]
    ) -> list[TopicPartition]:
        """Run the fenced XACK on each partition's IDs; the partitions whose lease is gone."""
        calls = [
            (tp, [lease_key(self._group, tp), stream_key(tp)], own.lease.token, ids[i : i + 1000])
            for tp, own, ids in acks
            for i in range(0, len(ids), 1000)
        ]
        if not calls:
            return []
        sha, group = self._ack.sha, self._group
        try:
            for attempt in (1, 2):
                pipe = self._r.pipeline(transaction=False)
                for _, keys, token, chunk in calls:
                    pipe.evalsha(sha, 2, *keys, token, group, *chunk)
                results = pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                    self._r.script_load(self._ack.script)  # a restarted or flushed Redis
                    continue  # acknowledging twice is harmless: XACK skips acked IDs
                break
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XACK: {exc}") from None
        refused: list[TopicPartition] = []
        for (tp, *_), result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                raise result
            if result == -1 and tp not in refused:
                log.warning(
                    "group %s: lease on %s[%d] is gone (expired, or Redis lost it): "
                    "acknowledgements refused; whoever owns it next handles those entries",
                    self._group, tp.topic, tp.partition,
                )  # fmt: skip
                self._lost_by_fence.append(tp)
                refused.append(tp)
        return refused

    transactional = True

    # A commit of 10,000 entries held the poll thread 20-40 ms (Redis ~1 us per XACKed entry,
    # redis-py ~0.4 us packing it): at 10,000 records/s, once per ``commit_interval``, that
    # was the p99 from broker to handler (26 ms against the raw loop's 3 ms, which acks each
    # read). Only while caught up: in a drain, larger commits cost less per record.
    commit_records_cap = 1000

    def offset_text(self, offset: int) -> str:
        return offset_to_id(offset)

    def commit_transaction(
        self, offsets: Mapping[TopicPartition, int], outputs: Sequence[Output]
    ) -> None:
        lost = self._transactions.commit(self._owned, offsets, outputs)
        if lost:
            self._lost_by_fence.extend(lost)
            raise CommitFailed(f"group {self._group}: no longer owns {sorted(lost)}")

    def save_state(self, tp: TopicPartition, offset: int, state: str) -> None:
        own = self._owned.get(tp)
        if own is None:
            raise CommitFailed(f"group {self._group}: does not own {tp}")
        keys = [lease_key(self._group, tp), state_key(self._group, tp)]
        try:
            stored = self._save_state(keys=keys, args=[own.lease.token, offset, state])
        except UNAVAILABLE as exc:
            raise CommitFailed(f"group {self._group}: state of {tp} not saved ({exc})") from None
        if stored != 1:
            raise CommitFailed(f"group {self._group}: lease on {tp} is gone; state not saved")
        self.commit({tp: offset}, sync=True)  # the entries before it are applied: ack them

    def load_state(self, tp: TopicPartition) -> tuple[int | None, str | None]:
        try:
            found = self._r.hmget(state_key(self._group, tp), "offset", "state")
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: cannot read state of {tp} ({exc})") from None
        offset, state = found
        text = state.decode() if isinstance(state, bytes) else state
        return (int(offset) if offset is not None else None), text

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        raise BrokerError("redis streams have no committed offsets; see pending entries")

    def lag(self, positions: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """Entries not yet delivered to the group plus those delivered but not acknowledged.

        One pipelined XINFO GROUPS for the partitions asked about (Redis >= 7 reports the
        undelivered count; where it cannot tell, after trims, the partition is left out).
        """
        tps = list(positions)
        try:
            infos = group_infos(self._r, self._group, tps)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XINFO GROUPS: {exc}") from None
        return {
            tp: int(info["lag"]) + int(info["pending"])
            for tp, info in zip(tps, infos, strict=True)
            if info is not None and info.get("lag") is not None
        }

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
                self._r.zrem(members_key(self._group, topic), self._member)
        except UNAVAILABLE as exc:
            log.warning("group %s: leaving cleanly failed (%s); leases expire by themselves",
                        self._group, exc)  # fmt: skip
        finally:
            self._r.close()
