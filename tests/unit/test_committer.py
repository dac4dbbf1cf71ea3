"""The commit policy: positions only past finished records, on count or time, never early.

Time is a fake clock (``Committer(clock=...)``), so the interval rule is tested without
waiting.
"""

from collections import deque

import pytest

from streamq.errors import CommitFailed, MemberFenced
from streamq.message import Message, TopicPartition
from streamq.offsets import OffsetTracker
from streamq.runtime.committer import Committer
from streamq.runtime.lanes import Completion

TP = TopicPartition("t", 0)


def msgs(offsets: list[int]) -> list[Message]:
    return [Message("t", 0, o, None, b"x" * 10) for o in offsets]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Backend:
    def __init__(self) -> None:
        self.commits: list[tuple[dict[TopicPartition, int], bool]] = []
        self.fail: Exception | None = None

    def commit(self, offsets: dict[TopicPartition, int], *, sync: bool) -> None:
        if self.fail is not None:
            raise self.fail
        self.commits.append((dict(offsets), sync))


def committer(every: int = 100, interval: float = 5.0):
    clock, backend, tracker = Clock(), Backend(), OffsetTracker()
    c = Committer("g", backend, tracker, every=every, interval=interval, clock=clock)  # type: ignore[arg-type]
    return c, clock, backend, tracker


def test_nothing_is_committed_before_its_records_complete() -> None:
    c, _clock, backend, tracker = committer(every=1)
    epoch = tracker.assign(TP)
    batch = msgs([0, 1, 2])
    tracker.track(TP, batch)
    c.maybe_commit()
    assert backend.commits == []
    done = deque([Completion(TP, epoch, batch[1:], False)])  # offset 0 is still running
    assert c.apply(done, None) == []
    c.maybe_commit()
    assert backend.commits == [({TP: 0}, False)]  # the first unfinished offset, no further
    c.apply(deque([Completion(TP, epoch, batch[:1], False)]), None)
    c.maybe_commit()
    assert backend.commits[-1] == ({TP: 3}, False)


def test_commits_on_the_interval_without_waiting() -> None:
    c, clock, backend, tracker = committer(every=1000, interval=5.0)
    epoch = tracker.assign(TP)
    batch = msgs([0, 1])
    tracker.track(TP, batch)
    c.apply(deque([Completion(TP, epoch, batch, False)]), None)
    clock.now += 4.9
    c.maybe_commit()
    assert backend.commits == []
    clock.now += 0.1
    c.maybe_commit()
    assert backend.commits == [({TP: 2}, False)]
    clock.now += 5.0
    c.maybe_commit()  # nothing new: an asynchronous commit sends only what moved
    assert backend.commits == [({TP: 2}, False)]


def test_stale_and_halted_completions() -> None:
    c, _clock, backend, tracker = committer(every=1)
    old = tracker.assign(TP)
    tracker.revoke(TP)
    epoch = tracker.assign(TP)
    batch = msgs([5, 6])
    tracker.track(TP, batch)
    completions = deque([Completion(TP, old, batch, False), Completion(TP, epoch, batch[:1], True)])
    assert c.apply(completions, None) == [TP]  # the stale one is ignored
    assert not completions
    c.maybe_commit()
    assert backend.commits == [({TP: 6}, False)]


def test_a_failed_commit_keeps_the_positions_dirty_and_is_counted() -> None:
    c, _clock, backend, tracker = committer(every=1)
    epoch = tracker.assign(TP)
    batch = msgs([0])
    tracker.track(TP, batch)
    c.apply(deque([Completion(TP, epoch, batch, False)]), None)
    backend.fail = CommitFailed("refused")
    assert c.commit(sync=False) is False
    assert c.commit_failures[("g",)] == 1
    assert c.commit_latency["async"].counts != [0] * len(c.commit_latency["async"].counts)
    backend.fail = None
    assert c.commit(sync=False) is True
    assert backend.commits == [({TP: 1}, False)]


def test_fenced_commit_raises_unless_closing() -> None:
    c, _clock, backend, tracker = committer()
    epoch = tracker.assign(TP)
    batch = msgs([0])
    tracker.track(TP, batch)
    c.apply(deque([Completion(TP, epoch, batch, False)]), None)
    backend.fail = MemberFenced("fenced")
    with pytest.raises(MemberFenced):
        c.commit(sync=True)
    c.closing = True
    assert c.commit(sync=True) is False


def test_commit_before_moves_past_the_records_or_drops_them() -> None:
    c, _clock, backend, tracker = committer()
    epoch = tracker.assign(TP)
    batch = msgs([0, 1])
    tracker.track(TP, batch)
    assert c.commit_before(TP, epoch, batch) is True
    assert backend.commits == [({TP: 2}, True)]
    more = msgs([2, 3])
    tracker.track(TP, more)
    backend.fail = CommitFailed("refused")
    assert c.commit_before(TP, epoch, more) is False
    assert tracker.parts[TP].in_flight == 2  # the first batch is still in flight, not these


def test_a_per_record_commit_cost_commits_in_small_steps_only_while_caught_up() -> None:
    """Redis pays per acknowledged entry: caught up, small commits keep the poll thread's
    pauses short; in a drain (``backlog``), ``every`` still decides."""
    clock, backend, tracker = Clock(), Backend(), OffsetTracker()
    c = Committer("g", backend, tracker, every=10, interval=5.0, clock=clock, caught_up_every=3)  # type: ignore[arg-type]
    epoch = tracker.assign(TP)
    batch = msgs(list(range(4)))
    tracker.track(TP, batch)
    c.apply(deque([Completion(TP, epoch, batch, False)]), None)
    c.maybe_commit(backlog=True)
    assert backend.commits == []  # 4 of 10 in a drain
    c.maybe_commit(backlog=False)
    assert backend.commits == [({TP: 4}, False)]  # 4 >= 3 while caught up
    more = msgs(list(range(4, 6)))
    tracker.track(TP, more)
    c.apply(deque([Completion(TP, epoch, more, False)]), None)
    c.maybe_commit(backlog=False)
    assert backend.commits == [({TP: 4}, False)]  # 2 < 3


def test_a_cap_above_every_changes_nothing() -> None:
    clock, backend, tracker = Clock(), Backend(), OffsetTracker()
    c = Committer("g", backend, tracker, every=2, interval=5.0, clock=clock, caught_up_every=50)  # type: ignore[arg-type]
    epoch = tracker.assign(TP)
    batch = msgs([0, 1])
    tracker.track(TP, batch)
    c.apply(deque([Completion(TP, epoch, batch, False)]), None)
    c.maybe_commit(backlog=False)
    assert backend.commits == [({TP: 2}, False)]
