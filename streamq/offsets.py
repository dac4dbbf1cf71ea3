"""The offset tracker: what may be committed, per partition.

Semantics, stated once: an offset names the *next* record to read, so the commit position of a
partition is the first tracked offset whose record is not done yet, or one past the last
tracked offset when everything is done. Offsets may have gaps (compaction, transaction
markers), so "done" is tracked per offset, never by counting.

Memory is proportional to in-flight work, not to offset distance (faust #453): a deque of the
unfinished offsets in order, plus a set of those finished out of order above the first gap.
A duplicate completion, or one for an offset already behind the position, is ignored
(faust #625).

Not thread-safe: the worker's poll thread owns it and feeds it completions.
"""

from __future__ import annotations

from collections import deque

from .message import Message, TopicPartition

__all__ = ["OffsetTracker", "PartitionOffsets"]


class PartitionOffsets:
    """Tracked offsets of one partition during one ownership epoch."""

    __slots__ = ("bytes", "committed", "done_above", "epoch", "last", "pending")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.pending: deque[int] = deque()
        self.done_above: set[int] = set()
        self.last = -1
        self.committed: int | None = None
        self.bytes = 0

    def track(self, offsets: list[int], nbytes: int = 0) -> None:
        """Record dispatched offsets; they must increase, as a partition's log does."""
        if not offsets:
            return
        if offsets[0] <= self.last:
            if self.pending:
                raise ValueError(
                    f"offset {offsets[0]} tracked after {self.last} while records are in flight"
                )
            self.done_above.clear()  # a rewind (seek back) with nothing in flight
        self.pending.extend(offsets)
        self.last = offsets[-1]
        self.bytes += nbytes

    def done(self, offset: int) -> bool:
        """Mark one offset done; False if it was not in flight (duplicate or stale)."""
        pending = self.pending
        if not pending or offset < pending[0]:
            return False
        if offset == pending[0]:
            pending.popleft()
            above = self.done_above
            while above and pending and pending[0] in above:
                above.discard(pending.popleft())
            return True
        if offset <= self.last and offset not in self.done_above:
            self.done_above.add(offset)
            return True
        return False

    @property
    def position(self) -> int | None:
        """First offset not yet done; None when nothing was ever tracked."""
        if self.pending:
            return self.pending[0]
        return self.last + 1 if self.last >= 0 else None

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.done_above)


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
        nbytes = 0
        for m in msgs:
            if m.value is not None:
                nbytes += len(m.value)
        part.track([m.offset for m in msgs], nbytes)
        self.in_flight_records += len(msgs)
        self.in_flight_bytes += nbytes
        return part

    def complete(self, tp: TopicPartition, epoch: int, msgs: list[Message]) -> bool:
        """Mark records done; False (and no effect) if the epoch is over."""
        part = self.parts.get(tp)
        if part is None or part.epoch != epoch:
            return False
        records = nbytes = 0
        for m in msgs:
            if part.done(m.offset):
                records += 1
                if m.value is not None:
                    nbytes += len(m.value)
        self.in_flight_records -= records
        part.bytes -= nbytes
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

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, pos in positions.items():
            part = self.parts.get(tp)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos
