"""Entries trimmed from a stream before the group handled them: found, counted, told once.

Two ways to lose entries to ``XADD MAXLEN``/``XTRIM`` (H2, E7): trimmed before the group read
them at all, which only the group's counters reveal (``check``), and trimmed while pending,
which XAUTOCLAIM and XREADGROUP report as deleted IDs (``report_lost``). Both are logged as
errors and counted as metrics events (``streamq.metrics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ...logs import get_logger
from ...message import TopicPartition
from .client import ResponseError, redis
from .entries import id_text, id_to_offset
from .errors import UNAVAILABLE
from .keys import stream_key, trimmed_key

__all__ = ["TRIM_CHECK_EVERY", "TrimWatch"]

log = get_logger("streamq.redis")

# Seconds between checks for entries trimmed before the group read them (two XINFO per
# owned partition each time).
TRIM_CHECK_EVERY = 5.0


class TrimWatch:
    """One member's trim accounting; ``events`` is the consumer's metrics counter."""

    def __init__(self, r: redis.Redis, group: str, events: Counter[tuple[str, str, str]]) -> None:
        self._r = r
        self._group = group
        self._events = events
        self._checked_at = 0.0

    def maybe_check(self, now: float, tps: list[TopicPartition]) -> None:
        """``check`` the owned partitions every ``TRIM_CHECK_EVERY`` seconds."""
        if now - self._checked_at >= TRIM_CHECK_EVERY:
            self._checked_at = now
            self.check(tps)

    def check(self, tps: list[TopicPartition]) -> None:
        """Find entries trimmed away before this group ever read them (H2), and say so once.

        Redis counts what a group read (``entries-read``) against what the stream ever got
        (``entries-added``): their difference, the group's ``lag``, keeps counting entries a
        trim removed unread, forever. So while the group has not reached the stream's head,
        lag minus the entries still there is what was lost; once it is caught up, all of the
        lag is. The total is kept per partition in Redis, so each loss is reported once,
        whichever member sees it. Costs two XINFO per owned partition every few seconds.
        """
        pipe = self._r.pipeline(transaction=False)
        for tp in tps:
            pipe.xinfo_stream(stream_key(tp))
            pipe.xinfo_groups(stream_key(tp))
        try:
            replies = pipe.execute(raise_on_error=False)
        except UNAVAILABLE:
            return  # the next beat says so; this check simply waits for the next round
        for i, tp in enumerate(tps):
            stream, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(stream, Exception) or isinstance(groups, Exception):
                continue
            ours = [g for g in groups if g["name"] in (self._group, self._group.encode())]
            if ours and ours[0].get("lag") is not None:
                self._note(tp, stream, ours[0])

    def _note(self, tp: TopicPartition, stream: Any, group: Any) -> None:
        """Report the growth of this partition's trimmed-unread total.

        Needs the group's read counter valid (groups streamq creates have it; after an
        XGROUP SETID without ENTRIESREAD Redis estimates it, counting what was trimmed as
        read, and such a loss goes unreported).
        """
        last = group["last-delivered-id"]
        first = stream["first-entry"][0] if stream.get("first-entry") else None
        if stream["last-generated-id"] == last or not stream["length"]:
            lost = int(group["lag"])  # caught up: nothing left to deliver
            where = f"before {id_text(last)}"
        elif first is not None and id_to_offset(first) > id_to_offset(last):
            lost = int(group["lag"]) - int(stream["length"])  # all that is left is unread
            where = f"between {id_text(last)} and {id_text(first)}"
        else:
            return  # between the two: wait until one of them holds
        if lost <= 0:
            return
        key = trimmed_key(self._group, tp)
        try:
            before = self._r.set(key, lost, get=True)
        except (ResponseError, *UNAVAILABLE):
            return
        new = lost - int(before or 0)
        if new <= 0:
            return
        self._events[("trimmed_unread", tp.topic, str(tp.partition))] += new
        log.error(
            "group %s: %d entries of %s[%d] (%s) were trimmed from the stream before the "
            "group read them: they are lost (XADD MAXLEN or XTRIM outran the consumers; raise "
            "redis_maxlen or leave it unset)",
            self._group, new, tp.topic, tp.partition, where,
        )  # fmt: skip

    def report_lost(self, tp: TopicPartition, ids: Sequence[bytes]) -> None:
        self._events[("lost_to_trim", tp.topic, str(tp.partition))] += len(ids)
        log.error(
            "group %s: %d pending entries of %s[%d] were trimmed from the stream before they "
            "were handled and cannot be delivered: %s",
            self._group, len(ids), tp.topic, tp.partition,
            ", ".join(id_text(i) for i in ids[:20]),
        )  # fmt: skip
