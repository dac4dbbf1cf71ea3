"""The commit position never passes an unfinished offset, whatever the order and gaps."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamq.message import Message, TopicPartition
from streamq.offsets import OffsetTracker
from tests.core import COMPILED, PURE_PYTHON, Core

TP = TopicPartition("t", 0)


def msgs(offsets: list[int]) -> list[Message]:
    return [Message("t", 0, o, None, b"x" * 10) for o in offsets]


@st.composite
def sparse_offsets(draw: st.DrawFn) -> list[int]:
    start = draw(st.integers(min_value=0, max_value=10**6))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=60))
    out, cur = [], start
    for g in gaps:
        out.append(cur)
        cur += g
    return out


@settings(max_examples=300)
@given(offsets=sparse_offsets(), seed=st.integers(), chunk=st.integers(min_value=1, max_value=7))
def test_position_is_first_unfinished(
    core: Core, offsets: list[int], seed: int, chunk: int
) -> None:
    part = core.PartitionOffsets(epoch=1)
    for i in range(0, len(offsets), chunk):
        part.track(offsets[i : i + chunk])
    order = offsets[:]
    random.Random(seed).shuffle(order)
    done: set[int] = set()
    for o in order:
        assert part.done(o)
        assert not part.done(o)  # a duplicate completion is ignored (faust #625)
        done.add(o)
        unfinished = [x for x in offsets if x not in done]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert part.position == expected
        # memory is O(records in the window), never O(offset distance): gaps reach 1e9
        # (faust #453)
        assert part.held <= len(offsets)
        assert part.in_flight == len(unfinished) <= part.held
    assert part.held == 0 and part.in_flight == 0


def test_position_none_until_tracked_then_one_past_last(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    assert part.position is None
    part.track([5, 9])
    assert part.position == 5
    part.done(9)
    assert part.position == 5
    part.done(5)
    assert part.position == 10


def test_stale_and_unknown_completions_are_ignored(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    part.track([10, 11])
    assert not part.done(3)  # behind the position
    assert not part.done(99)  # never tracked
    assert part.position == 10


def test_a_gap_offset_is_not_in_flight(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    part.track([10, 20])  # 11..19 are a gap: compacted away, or transaction markers
    assert not part.done(15)
    assert part.in_flight == 2
    assert part.done(20) and part.in_flight == 1 and part.position == 10
    assert part.done(10) and part.position == 21


def test_tracking_backwards_with_work_in_flight_is_refused(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    part.track([10, 11])
    with pytest.raises(ValueError, match="in flight"):
        part.track([5])
    assert part.held == 2 and part.position == 10


def test_rewind_after_everything_is_done(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    part.track([10, 11])
    part.done(10)
    part.done(11)
    part.track([3, 4])  # a seek back (replay)
    assert part.position == 3


def test_tracker_epochs_fence_late_completions() -> None:
    tracker = OffsetTracker()
    e1 = tracker.assign(TP)
    batch = msgs([0, 1, 2])
    tracker.track(TP, batch)
    assert tracker.in_flight_records == 3 and tracker.in_flight_bytes == 30
    tracker.revoke(TP)
    e2 = tracker.assign(TP)
    assert e2 != e1
    assert not tracker.complete(TP, e1, batch)  # from the old ownership: ignored
    tracker.track(TP, msgs([3]))
    assert tracker.complete(TP, e2, msgs([3]))
    assert tracker.dirty_positions() == {TP: 4}
    tracker.mark_committed({TP: 4})
    assert tracker.dirty_positions() == {}
    assert tracker.in_flight_records == 0 and tracker.in_flight_bytes == 0


def test_counts_ignore_duplicate_completions() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    batch = msgs([0, 1])
    tracker.track(TP, batch)
    tracker.complete(TP, epoch, batch)
    tracker.complete(TP, epoch, batch)
    assert tracker.in_flight_records == 0 and tracker.in_flight_bytes == 0


def test_message_helpers_count_bytes_once(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    batch = [core.Message("t", 0, o, None, None if o == 2 else b"x" * 10) for o in range(4)]
    assert part.track_messages(batch) == 30
    assert part.bytes == 30
    assert part.complete_messages(batch[1:3]) == (2, 10)
    assert part.complete_messages(batch[1:3]) == (0, 0)  # duplicates count nothing
    assert part.bytes == 20 and part.in_flight == 2 and part.position == 0


# A random history of tracks and completions, including duplicates, gaps and stale ones.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("track"), st.integers(min_value=1, max_value=6)),
        st.tuples(st.just("done"), st.integers(min_value=0, max_value=40)),
    ),
    max_size=60,
)


@pytest.mark.cython
@settings(max_examples=300)
@given(history=ops, gap=st.integers(min_value=1, max_value=3))
def test_cython_and_python_trackers_agree(history: list, gap: int) -> None:
    assert COMPILED is not None
    py, cy = PURE_PYTHON.PartitionOffsets(1), COMPILED.PartitionOffsets(1)
    next_offset = 0
    for op, arg in history:
        if op == "track":
            batch = list(range(next_offset, next_offset + arg * gap, gap))
            next_offset = batch[-1] + gap
            py.track(batch, len(batch))
            cy.track(batch, len(batch))
        else:
            assert py.done(arg) == cy.done(arg)
        assert (py.position, py.in_flight, py.held, py.bytes, py.last) == (
            cy.position,
            cy.in_flight,
            cy.held,
            cy.bytes,
            cy.last,
        )


def test_skip_to_steps_over_offsets_without_records_only_when_idle(core: Core) -> None:
    """Kafka's transaction markers take offsets: an idle partition's position follows the
    client past them, so its commit reaches the end of the log."""
    part = core.PartitionOffsets()
    part.track([4, 5])
    part.skip_to(9)
    assert part.position == 4  # records in flight: nothing moves
    part.done(4)
    part.done(5)
    part.skip_to(7)
    assert part.position == 7
    part.skip_to(3)
    assert part.position == 7  # never backwards


def test_a_span_completes_a_run_of_tracked_records_without_reading_them(core: Core) -> None:
    part = core.PartitionOffsets(epoch=1)
    batch = [core.Message("t", 0, o, None, b"x" * 10) for o in (3, 5, 8, 9, 12, 20)]
    assert part.track_messages(batch) == 60
    # a run in the middle first: finished out of order, the position stays
    assert part.complete_span(core.span_of(batch[2:4])) == (2, 20)
    assert (part.position, part.in_flight, part.bytes) == (3, 4, 40)
    # the run at the head: the position moves past it and past what finished before
    assert part.complete_span(core.span_of(batch[:2])) == (2, 20)
    assert (part.position, part.in_flight, part.bytes) == (12, 2, 20)
    # behind the position (an earlier epoch's leftovers): nothing
    assert part.complete_span(core.span_of(batch[:2])) == (0, 0)
    assert part.complete_span(core.span_of([])) == (0, 0)
    assert part.complete_span(core.span_of(batch[4:])) == (2, 20)
    assert (part.position, part.in_flight, part.bytes, part.held) == (21, 0, 0, 0)


def test_a_span_that_is_not_a_run_of_tracked_records_raises(core: Core) -> None:
    """A span names whole tracked runs by construction; anything else must not commit."""
    part = core.PartitionOffsets(epoch=1)
    batch = [core.Message("t", 0, o, None, b"x") for o in range(10)]
    part.track_messages(batch)
    with pytest.raises(RuntimeError, match="not a run of tracked offsets"):
        part.complete_span(core.Span(2, 6, 3, 3))  # 2..6 holds five records, not three
    with pytest.raises(RuntimeError, match="not a run of tracked offsets"):
        part.complete_span(core.Span(8, 12, 5, 5))  # past the last tracked offset
    part.complete_messages(batch[4:5])
    with pytest.raises(RuntimeError, match="finished before"):
        part.complete_span(core.span_of(batch[3:6]))
    assert (part.position, part.in_flight) == (0, 9)  # a refused span changed nothing


@settings(max_examples=200)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8),
    seed=st.integers(),
)
def test_spans_and_records_complete_alike(core: Core, sizes: list[int], seed: int) -> None:
    """Runs of each tracked batch, finished in any order, one tracker told by span and one
    told record by record: the same position, counts and bytes after every step."""
    rng = random.Random(seed)
    by_span, by_record = core.PartitionOffsets(1), core.PartitionOffsets(1)
    runs, offset = [], 0
    for n in sizes:
        batch = [core.Message("t", 0, offset + 2 * i, None, b"x" * (i + 1)) for i in range(n)]
        offset += 2 * n + rng.randint(0, 3)
        by_span.track_messages(batch)
        by_record.track_messages(batch)
        cut = rng.randint(0, n)
        runs += [run for run in (batch[:cut], batch[cut:]) if run]
    rng.shuffle(runs)
    for run in runs:
        assert by_span.complete_span(core.span_of(run)) == by_record.complete_messages(run)
        assert (by_span.position, by_span.in_flight, by_span.held, by_span.bytes) == (
            by_record.position,
            by_record.in_flight,
            by_record.held,
            by_record.bytes,
        )
    assert by_span.in_flight == 0 and by_span.bytes == 0
