"""A share-group member on Redis (``group_type="share"``): competing consumers, no leases.

Every member reads every partition stream through the one consumer group per stream:
XREADGROUP hands each entry to one member, and each entry is acknowledged alone (XACK; no
lease fences it, since no member owns a partition). Entries a member took and never
acknowledged (it died, or its handler outran ``visibility_timeout``) are claimed by another
member once they sat that long (XAUTOCLAIM); their delivery count, the PEL's, becomes
``Message.attempt``, which the runtime uses to run a redelivered record alone and to
dead-letter one that keeps killing its workers.

The runtime's offset tracker needs a partition's offsets to increase while its records are
in flight, and a claimed entry sits below newer ones: so a member reads in rounds, the next
only once every record of the last one is acknowledged (as Kafka's share consumer does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...dispatch import redis_messages
from ...errors import BrokerError, BrokerUnavailable
from ...logs import get_logger
from ...message import Message, TopicPartition
from ..base import Rebalance, Round, ShareBackend
from .admin import group_infos
from .client import ResponseError
from .consumer import RedisConsumer, script
from .entries import SEQ_BITS, decode_headers, offset_to_id, stream_replies
from .errors import UNAVAILABLE
from .keys import members_key, stream_key

if TYPE_CHECKING:
    from .config import RedisBroker

__all__ = ["RedisShareConsumer"]

log = get_logger("streamq.redis")

# Seconds finished records of a round still running may wait for their XACK.
_ACK_EVERY = 0.05


class RedisShareConsumer(ShareBackend, RedisConsumer):
    def __init__(self, broker: RedisBroker, group: str, round_size: int = 500) -> None:
        super().__init__(broker, group)
        self._acks: dict[TopicPartition, list[Any]] = {}  # finished, XACK not sent yet
        self._acks_since = 0.0
        self.round = self._round_in_flight = Round(round_size, self._settings.max_poll_records)
        self._hold = self._r.register_script(script("hold.lua"))
        self._next_hold = 0.0
        self._visibility_ms = int(self._settings.visibility_timeout * 1000)
        self._delivered: dict[TopicPartition, set[int]] = {}  # taken, not acknowledged
        self._rejected: set[tuple[str, int, int]] = set()  # dead-lettered (counted apart)
        self._streams: dict[str, TopicPartition] = {}
        self._next_claim = 0.0

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        # the classic member's: groups on every stream, then _beat (here: heartbeat only)
        super().subscribe(topics, on_assign, on_revoke, on_lost)
        for topic, count in self._topics.items():
            for p in range(count):
                tp = TopicPartition(topic, p)
                self._delivered[tp] = set()
                self._streams[stream_key(tp)] = tp
        on_assign(list(self._delivered))  # every member reads every partition

    def _beat(self) -> None:
        """Heartbeat only: the registry shows the members (``status``); nothing is assigned."""
        self._next_beat = time.monotonic() + self._ttl / 3
        try:
            self._heartbeat()
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: heartbeat failed: {exc}") from None

    @property
    def settled(self) -> bool:
        """Nothing undelivered and nothing pending anywhere in the group, checked each 1 s."""
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            try:
                infos = group_infos(self._r, self._group, list(self._delivered))
            except UNAVAILABLE:
                return False
            self._caught_up = all(
                info is None or not (info.get("pending") or info.get("lag")) for info in infos
            )
        return self._caught_up

    # -- fetching ----------------------------------------------------------------------------

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        now = time.monotonic()
        if now >= self._next_beat:
            self._beat()
        if any(self._delivered.values()):  # the last round is not all acknowledged yet
            if now >= self._next_hold:
                self._keep_held(now)
            if self._acks and now - self._acks_since >= _ACK_EVERY:  # a slow record waits
                self.commit({}, sync=True)
            self._round_in_flight.done.wait(timeout)  # the runtime counts the round down
            return []
        self._next_hold = now + self._visibility_ms / 3000
        self.redelivered = False
        readable = [tp for tp in self._delivered if tp not in self._paused]
        if not readable:
            time.sleep(timeout)
            return []
        max_records = min(max_records, self._round_in_flight.size)
        try:
            if now >= self._next_claim:
                self._next_claim = now + max(0.2, self._visibility_ms / 4000)
                claimed = self._claim(readable, max_records)
                if claimed:
                    self.redelivered = True
                    self._round_in_flight.start(len(claimed))
                    return claimed
            streams = {stream_key(tp): ">" for tp in readable}
            reply: Any = self._r.xreadgroup(
                self._group, self._member, streams,  # type: ignore[arg-type]
                count=max(1, max_records // len(readable)),
                block=max(1, int(timeout * 1000)) if timeout > 0 else None,
            )  # fmt: skip
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise BrokerError(f"redis: XREADGROUP: {exc}") from None
            for tp in readable:
                self._recreate_group(stream_key(tp))
            return []
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XREADGROUP: {exc}") from None
        out: list[Message] = []
        for raw_key, entries in stream_replies(reply):  # unparsed: RedisConsumer
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            out += self._take(self._streams[key], entries)
        self._round_in_flight.start(len(out))
        return out

    def _keep_held(self, now: float) -> None:
        """A round running long: what it holds stays this member's (``lua/hold.lua``)."""
        self._next_hold = now + self._visibility_ms / 3000
        pipe = self._r.pipeline(transaction=False)
        for tp, delivered in self._delivered.items():
            if delivered:
                ids = [offset_to_id(o) for o in delivered]
                self._hold(keys=[stream_key(tp)], args=[self._group, self._member, *ids],
                           client=pipe)  # fmt: skip
        try:
            pipe.execute()
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: keeping held entries: {exc}") from None

    def _claim(self, tps: list[TopicPartition], max_records: int) -> list[Message]:
        """Entries other members took and did not acknowledge within the visibility timeout.

        Claimed partition by partition (one XAUTOCLAIM page each), with their delivery
        counts read back from the PEL; a partition's claimed entries come in ID order.
        """
        out: list[Message] = []
        count = max(1, max_records // len(tps))
        for tp in tps:
            key = stream_key(tp)
            reply = self._r.xautoclaim(
                key, self._group, self._member, min_idle_time=self._visibility_ms,
                start_id="0-0", count=count,
            )  # fmt: skip
            entries, deleted = reply[1], reply[2] if len(reply) > 2 else []
            if deleted:
                self._trims.report_lost(tp, deleted)
            if not entries:
                continue
            pending = self._r.xpending_range(
                key, self._group, min=entries[0][0], max=entries[-1][0], count=len(entries),
                consumername=self._member,
            )  # fmt: skip
            counts = {p["message_id"]: p["times_delivered"] for p in pending}
            msgs = self._take(tp, entries)
            for msg in msgs:
                msg.attempt = int(counts.get(offset_to_id(msg.offset).encode(), 2))
            if msgs:
                self._events[("share_redelivered", tp.topic, str(tp.partition))] += len(msgs)
                log.warning(
                    "group %s: claimed %d records of %s[%d] another member took and did not "
                    "acknowledge within %.1fs (it died, or its handler ran longer)",
                    self._group, len(msgs), tp.topic, tp.partition, self._visibility_ms / 1000,
                )  # fmt: skip
            out += msgs
        return out

    def _take(self, tp: TopicPartition, entries: list[Any]) -> list[Message]:
        trimmed: list[Any] = []
        offsets: list[int] = []
        msgs = redis_messages(
            tp.topic, tp.partition, entries, offsets, trimmed, SEQ_BITS, decode_headers
        )
        self._delivered[tp].update(offsets)
        if trimmed:
            self._trims.report_lost(tp, trimmed)
            self._xack({tp: trimmed})
        return msgs

    # -- acknowledging -----------------------------------------------------------------------

    def acknowledge(self, tp: TopicPartition, records: Sequence[Message]) -> None:
        delivered = self._delivered.get(tp)
        if not delivered:
            return
        ids = self._acks.setdefault(tp, [])
        before = len(ids)
        rejected = self._rejected
        dead = 0
        for m in records:
            if m.offset in delivered:
                delivered.discard(m.offset)
                ids.append(offset_to_id(m.offset))
                if rejected and (tp.topic, tp.partition, m.offset) in rejected:
                    rejected.discard((tp.topic, tp.partition, m.offset))
                    dead += 1
        self._count(tp, len(ids) - before - dead, dead)
        if not self._acks_since:
            self._acks_since = time.monotonic()

    def commit(self, offsets: Mapping[TopicPartition, int], *, sync: bool) -> None:
        """Send the acknowledgements (``acknowledge``): XACK, one pipeline.

        The runtime commits whenever records finish; the XACKs go out when the round is
        done, on a synchronous commit, or ``_ACK_EVERY`` seconds after the oldest one
        waiting: a member that dies redoes at most that much finished work.
        """
        acks = self._acks
        if not acks:
            return
        now = time.monotonic()
        if sync or now - self._acks_since >= _ACK_EVERY or not any(self._delivered.values()):
            self._acks, self._acks_since = {}, 0.0
            self._xack(acks)

    def _xack(self, acks: Mapping[TopicPartition, Sequence[Any]]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for tp, ids in acks.items():
            for i in range(0, len(ids), 1000):
                pipe.xack(stream_key(tp), self._group, *ids[i : i + 1000])
        try:
            pipe.execute()
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: XACK: {exc}") from None

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update(tps)

    def _hand_back(self) -> None:
        """Hand back what this member took and did not finish (a stop).

        Claimable by the others at once (IDLE set to the timeout) instead of after it;
        JUSTID adds no delivery.
        """
        pipe = self._r.pipeline(transaction=False)
        for tp, delivered in self._delivered.items():
            ids: list[Any] = [offset_to_id(o) for o in delivered]
            for i in range(0, len(ids), 1000):
                pipe.xclaim(stream_key(tp), self._group, self._member, 0, ids[i : i + 1000],
                            idle=self._visibility_ms, justid=True)  # fmt: skip
            if ids:
                self._events[("share_released", tp.topic, str(tp.partition))] += len(ids)
            delivered.clear()
        pipe.execute()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._callbacks is not None:
                self._callbacks[1](list(self._delivered))  # finish, acknowledge what finished
            self._hand_back()
            for topic in self._topics:
                self._r.zrem(members_key(self._group, topic), self._member)
        except UNAVAILABLE as exc:
            log.warning(
                "group %s: leaving cleanly failed (%s); what this member took is claimed by "
                "others after the visibility timeout", self._group, exc,
            )  # fmt: skip
        finally:
            self._r.close()
