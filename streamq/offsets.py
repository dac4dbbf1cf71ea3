"""The offset tracker: what may be committed, per partition.

Semantics, stated once: an offset names the *next* record to read, so the commit position of a
partition is the first tracked offset whose record is not done yet, or one past the last
tracked offset when everything is done. Offsets may have gaps (compaction, transaction
markers), so "done" is tracked per offset, never by counting.

Memory is proportional to in-flight work, not to offset distance (faust #453): the offsets in
flight in order, with those finished out of order above the first unfinished one marked.
The compiled twin (``streamq._dispatch.PartitionOffsets``) keeps them in a C array.
A duplicate completion, or one for an offset already behind the position, is ignored
(faust #625).

Not thread-safe: the worker's poll thread owns it and feeds it completions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._native import native
from .message import Message, TopicPartition

__all__ = ["OffsetTracker", "PartitionOffsets", "Span", "span_of"]


class _SpanPy:
    """What a lane finished, as the offset tracker needs it: first and last offset, how many.

    Built on the event loop's thread (``span_of``) for a run of records that were tracked
    next to each other, so the poll thread completes them without reading each record
    (twin of the compiled one).
    """

    __slots__ = ("count", "first", "last", "nbytes")

    def __init__(self, first: int, last: int, count: int, nbytes: int) -> None:
        self.first = first
        self.last = last
        self.count = count
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"Span({self.first}, {self.last}, count={self.count}, nbytes={self.nbytes})"


def _span_of_py(msgs: list[Message]) -> _SpanPy:
    """The ``Span`` of records that were tracked next to each other, in log order."""
    nbytes = 0
    for m in msgs:
        if m.value is not None:
            nbytes += len(m.value)
    if not msgs:
        return _SpanPy(0, -1, 0, 0)
    return _SpanPy(msgs[0].offset, msgs[-1].offset, len(msgs), nbytes)


class _PartitionOffsetsPy:
    """Tracked offsets of one partition during one ownership epoch (twin of the compiled one).

    The offsets in flight sit in one sorted list (they arrive in log order) from ``_head`` on;
    those finished out of order above the first unfinished one are in ``_done``. Completing
    the first advances the head past every finished one behind it.
    """

    __slots__ = ("_done", "_head", "_offs", "bytes", "committed", "epoch", "last")

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch
        self._offs: list[int] = []
        self._head = 0
        self._done: set[int] = set()
        self.last = -1
        self.committed: int | None = None
        self.bytes = 0

    def _begin(self, first: int) -> None:
        if first <= self.last:
            if self._head < len(self._offs):
                raise ValueError(
                    f"offset {first} tracked after {self.last} while records are in flight"
                )
            self._done.clear()  # a rewind (seek back) with nothing in flight
        if self._head and self._head * 2 >= len(self._offs):
            del self._offs[: self._head]  # amortised: the list never holds more than 2x
            self._head = 0

    def track(self, offsets: list[int], nbytes: int = 0) -> None:
        """Record dispatched offsets; they must increase, as a partition's log does."""
        if not offsets:
            return
        self._begin(offsets[0])
        self._offs.extend(offsets)
        self.last = offsets[-1]
        self.bytes += nbytes

    def track_messages(self, msgs: list[Message]) -> int:
        """``track`` for records; returns their payload bytes."""
        if not msgs:
            return 0
        nbytes = 0
        for m in msgs:
            if m.value is not None:
                nbytes += len(m.value)
        self.track([m.offset for m in msgs], nbytes)
        return nbytes

    def _advance(self, by: int) -> None:
        """The first ``by`` entries are done: move past them and what finished behind them."""
        offs, done = self._offs, self._done
        head, n = self._head + by, len(offs)
        while head < n and offs[head] in done:
            done.discard(offs[head])
            head += 1
        if head == n:
            offs.clear()
            head = 0
        self._head = head

    def done(self, offset: int) -> bool:
        """Mark one offset done; False if it was not in flight (duplicate, stale, a gap)."""
        offs, head = self._offs, self._head
        n = len(offs)
        if head >= n or offset < offs[head]:
            return False
        if offset == offs[head]:
            self._advance(1)
            return True
        if offset > self.last or offset in self._done:
            return False
        i = bisect_left(offs, offset, head + 1)
        if i < n and offs[i] == offset:
            self._done.add(offset)
            return True
        return False

    def complete_messages(self, msgs: list[Message]) -> tuple[int, int]:
        """``done`` for records; returns (records newly done, their payload bytes)."""
        records = nbytes = 0
        for m in msgs:
            if self.done(m.offset):
                records += 1
                if m.value is not None:
                    nbytes += len(m.value)
        self.bytes -= nbytes
        return records, nbytes

    def complete_span(self, span: _SpanPy) -> tuple[int, int]:
        """``complete_messages`` for a run of records tracked next to each other.

        The poll thread then never touches the records a lane finished: they were last used
        on the event loop's thread, and are freed there. A span must name whole tracked
        entries (the lane's records, in order, none finished before); anything else is a
        bug in whoever built it, and raises rather than commit past a record not done.
        """
        offs, head, count = self._offs, self._head, span.count
        n = len(offs)
        if count == 0 or head >= n or span.last < offs[head]:
            return 0, 0  # nothing, or behind the position: an epoch's leftovers
        i = head if span.first == offs[head] else bisect_left(offs, span.first, head + 1)
        if i + count > n or offs[i] != span.first or offs[i + count - 1] != span.last:
            raise RuntimeError(
                f"span {span.first}..{span.last} of {count} records is not a run of tracked "
                f"offsets in flight (from {offs[head]}, {n - head} held)"
            )
        run = offs[i : i + count]
        done = self._done
        if done and not done.isdisjoint(run):
            raise RuntimeError(f"span {span.first}..{span.last} has records finished before")
        if i == head:
            self._advance(count)
        else:
            done.update(run)
        self.bytes -= span.nbytes
        return count, span.nbytes

    def skip_to(self, offset: int) -> None:
        """With nothing in flight, move the position to where the client is (``offset``).

        What lies between held no records for us: Kafka's transaction markers.
        """
        if self._head >= len(self._offs) and offset - 1 > self.last:
            self.last = offset - 1

    @property
    def position(self) -> int | None:
        """First offset not yet done; None when nothing was ever tracked."""
        if self._head < len(self._offs):
            return self._offs[self._head]
        return self.last + 1 if self.last >= 0 else None

    @property
    def in_flight(self) -> int:
        return len(self._offs) - self._head - len(self._done)

    @property
    def held(self) -> int:
        """Offsets held in memory: the in-flight window, never the offset distance."""
        return len(self._offs) - self._head


class OffsetTracker:
    """Per-partition offsets for every partition a consumer currently owns."""

    def __init__(self) -> None:
        self.parts: dict[TopicPartition, PartitionOffsets] = {}
        self._epoch = 0
        self.in_flight_records = 0
        self.in_flight_bytes = 0

    def assign(self, tp: TopicPartition) -> int:
        """Start a new ownership epoch for ``tp``; completions from older epochs are ignored."""
        self.revoke(tp)
        self._epoch += 1
        self.parts[tp] = PartitionOffsets(self._epoch)
        return self._epoch

    def revoke(self, tp: TopicPartition) -> None:
        part = self.parts.pop(tp, None)
        if part is not None:
            self.in_flight_records -= part.in_flight
            self.in_flight_bytes -= part.bytes

    def track(self, tp: TopicPartition, msgs: list[Message]) -> PartitionOffsets:
        part = self.parts[tp]
        self.in_flight_bytes += part.track_messages(msgs)
        self.in_flight_records += len(msgs)
        return part

    def complete(self, tp: TopicPartition, epoch: int, msgs: list[Message] | Span) -> bool:
        """Mark records done; False (and no effect) if the epoch is over."""
        part = self.parts.get(tp)
        if part is None or part.epoch != epoch:
            return False
        if type(msgs) is Span:
            records, nbytes = part.complete_span(msgs)
        else:
            records, nbytes = part.complete_messages(msgs)  # type: ignore[arg-type]
        self.in_flight_records -= records
        self.in_flight_bytes -= nbytes
        return True

    def dirty_positions(self) -> dict[TopicPartition, int]:
        """Positions that moved past the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self.parts.items():
            pos = part.position
            if pos is not None and (part.committed is None or pos > part.committed):
                out[tp] = pos
        return out

    def positions(self) -> dict[TopicPartition, int]:
        """Every known position, committed or not: what a synchronous commit re-asserts."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self.parts.items():
            pos = part.position
            if pos is not None:
                out[tp] = pos
        return out

    def mark_uncommitted(self, tps: Iterable[TopicPartition]) -> None:
        """Their last commit failed after all: the next commit carries their positions again."""
        for tp in tps:
            part = self.parts.get(tp)
            if part is not None:
                part.committed = None

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, pos in positions.items():
            part = self.parts.get(tp)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos


PartitionOffsets = _PartitionOffsetsPy
Span = _SpanPy
span_of = _span_of_py
if native is not None and not TYPE_CHECKING:
    PartitionOffsets = native.PartitionOffsets
    Span = native.Span
    span_of = native.span_of
