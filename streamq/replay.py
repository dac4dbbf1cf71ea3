"""Replay: run an app's handler over an exact offset range, leaving its group untouched.

The handler runs inside the ordinary worker runtime (the same retry, backoff and DLQ policy,
ordering and backpressure), fed by ``RangeBackend``: manual assignment of the chosen
partitions, records cut at each range's end, and a commit that does nothing. So the live
group's committed position never moves, and replay may run while the group is running.

Ranges are planned before anything is handled, from offsets and times on the broker: the
end defaults to the end offsets when the replay starts, so records produced meanwhile are not
part of it, and the run stops once every partition was read to its end and everything read
was handled or dead-lettered. It does not wait for quiet.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from .brokers.base import Backend, Lease, Rebalance
from .brokers.view import LogView, integer_offset
from .errors import ConfigError, UnknownTopicOrPartition
from .message import Message, TopicPartition

__all__ = [
    "PartitionRange",
    "RangeBackend",
    "parse_offsets",
    "parse_time",
    "plan",
    "positions_from",
    "refuse_past_end",
]

Bounds = dict[int, tuple[int, int]]  # partition -> (first offset, one past the last)

# The shape only; what one N may be is the broker's to say (``LogView.offset_from_text``).
_N = r"[^,:\s]+"
_ONE = re.compile(_N)
_PER_PARTITION = re.compile(rf"[0-9]+:{_N}(?:,[0-9]+:{_N})*")


def parse_time(text: str, option: str) -> int:
    """ISO-8601 (naive means local time) or epoch milliseconds, as epoch milliseconds."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{option}: {text!r} is not an ISO-8601 time (2026-11-21T10:00:00Z) or epoch ms"
        ) from None
    return int(moment.timestamp() * 1000)


def parse_offsets(
    text: str, option: str, offset_of: Callable[[str], int] = integer_offset
) -> int | dict[int, int]:
    """``N`` (every partition) or ``P:N[,P:N...]``, each N read by the broker's ``offset_of``."""
    raw = text.strip()
    if _ONE.fullmatch(raw):
        return _offset(raw, option, offset_of)
    if not _PER_PARTITION.fullmatch(raw):
        raise ConfigError(f"{option}: expected N or P:N[,P:N...], got {text!r}")
    out: dict[int, int] = {}
    for pair in raw.split(","):
        p, _, n = pair.partition(":")
        if int(p) in out:
            raise ConfigError(f"{option}: partition {p} given twice")
        out[int(p)] = _offset(n, option, offset_of)
    return out


def _offset(text: str, option: str, offset_of: Callable[[str], int]) -> int:
    try:
        return offset_of(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


@dataclass
class PartitionRange:
    partition: int
    start: int
    end: int
    records: int


def positions_from(
    view: LogView,
    topic: str,
    *,
    option: str,
    offsets: str | None = None,
    at_time: str | None = None,
    earliest: bool = False,
    latest: bool = False,
    bounds: Bounds | None = None,
) -> dict[int, int]:
    """One position per partition from exactly one of the ways to name it."""
    bounds = bounds if bounds is not None else view.bounds(topic)
    if earliest:
        return {p: low for p, (low, _) in bounds.items()}
    if latest:
        return {p: end for p, (_, end) in bounds.items()}
    if at_time is not None:
        ms = parse_time(at_time, option)
        found = view.offsets_for_time(topic, ms)
        return {p: bounds[p][1] if found.get(p) is None else int(found[p] or 0) for p in bounds}
    assert offsets is not None
    parsed = parse_offsets(offsets, option, view.offset_from_text)
    if isinstance(parsed, int):
        return dict.fromkeys(bounds, parsed)
    unknown = sorted(set(parsed) - set(bounds))
    if unknown:
        raise ConfigError(
            f"{option}: {topic} has no partition {unknown[0]} (partitions 0..{len(bounds) - 1})"
        )
    return parsed


def plan(
    view: LogView,
    topic: str,
    *,
    from_beginning: bool = False,
    from_offset: str | None = None,
    from_time: str | None = None,
    to_offset: str | None = None,
    to_time: str | None = None,
    partitions: Sequence[int] = (),
) -> list[PartitionRange]:
    """The exact range per partition, checked against the log before anything runs."""
    if sum((from_beginning, from_offset is not None, from_time is not None)) != 1:
        raise ConfigError("give exactly one of --from-beginning, --from-offset, --from-time")
    if to_offset is not None and to_time is not None:
        raise ConfigError("give at most one of --to-offset, --to-time")
    bounds = view.bounds(topic)
    for p in partitions:
        if p not in bounds:
            raise ConfigError(f"--partition: {topic} has no partition {p} "
                              f"(partitions 0..{len(bounds) - 1})")  # fmt: skip
    by = "--from-offset" if from_offset is not None else "--from-time"
    starts = positions_from(view, topic, option=by, offsets=from_offset, at_time=from_time,
                            earliest=from_beginning, bounds=bounds)  # fmt: skip
    if from_offset is not None:
        refuse_past_end(view, "--from-offset", topic, starts, bounds)
    if to_offset is not None or to_time is not None:
        by = "--to-offset" if to_offset is not None else "--to-time"
        ends = positions_from(view, topic, option=by, offsets=to_offset, at_time=to_time,
                              bounds=bounds)  # fmt: skip
    else:
        ends = {p: end for p, (_, end) in bounds.items()}
    chosen = list(partitions) or sorted(starts)
    out = []
    for p in chosen:
        if p not in starts:
            continue  # P:N named other partitions only
        low, high = bounds[p]
        start = max(starts[p], low)
        end = min(ends.get(p, high), high)
        end = max(end, start)
        out.append(PartitionRange(p, start, end, view.count(topic, p, start, end)))
    if not out:
        raise ConfigError("nothing to replay: no partition matches")
    return out


def refuse_past_end(
    view: LogView, option: str, topic: str, positions: dict[int, int], bounds: Bounds
) -> None:
    """A position may be the end itself (nothing left), never past it: a typo, not a wish."""
    for p, position in positions.items():
        end = bounds[p][1]
        if position > end:
            raise ConfigError(f"{option}: {view.offset_text(position)} is beyond the end of "
                              f"{topic}[{p}] (end {view.offset_text(end)})")  # fmt: skip


class RangeBackend(Backend):
    """A ``Backend`` over fixed ranges: manual assignment, nothing committed anywhere."""

    def __init__(
        self, view: LogView, topic: str, ranges: list[PartitionRange], rate: float | None = None
    ) -> None:
        self._reader: Iterator[list[Message]] = view.read(
            topic, {r.partition: (r.start, r.end) for r in ranges}
        )
        self._tps = [TopicPartition(topic, r.partition) for r in ranges if r.records]
        self._buffer: deque[Message] = deque()
        self._paused: set[tuple[str, int]] = set()
        self._done = False
        self._rate = rate
        self._started = time.monotonic()
        self._handed = 0

    def subscribe(
        self, topics: Sequence[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        on_assign(self._tps)

    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        if len(self._buffer) < max_records and not self._done:
            try:
                self._buffer.extend(next(self._reader))
            except StopIteration:
                self._done = True
        limit = max_records
        if self._rate is not None:
            allowed = int(self._rate * (time.monotonic() - self._started)) - self._handed
            if allowed <= 0:
                time.sleep(min(timeout, 1.0 / self._rate))
                return []
            limit = min(limit, allowed)
        if not self._buffer:
            return []
        out: list[Message] = []
        keep: deque[Message] = deque()
        paused = self._paused
        for m in self._buffer:
            if len(out) < limit and (m.topic, m.partition) not in paused:
                out.append(m)
            else:
                keep.append(m)
        self._buffer = keep
        self._handed += len(out)
        return out

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.update((tp.topic, tp.partition) for tp in tps)

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        self._paused.difference_update((tp.topic, tp.partition) for tp in tps)

    def commit(self, offsets: object, *, sync: bool) -> None:
        """Nothing: a replay never moves any group's position."""

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise UnknownTopicOrPartition("a replay reads fixed ranges; it cannot seek")

    def offsets_for_times(self, topic: str, timestamp_ms: int) -> dict[TopicPartition, int | None]:
        raise UnknownTopicOrPartition("a replay reads fixed ranges")

    def lease_of(self, tp: TopicPartition) -> Lease | None:
        return None

    @property
    def settled(self) -> bool:
        """Idle may only start once every range was read to its end and handed out."""
        return self._done and not self._buffer

    def close(self) -> None:
        """The view belongs to the caller."""
