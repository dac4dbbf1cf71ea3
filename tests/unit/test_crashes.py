"""How a new owner cuts what a dead owner left behind: chunks, suspects and normal runs."""

from __future__ import annotations

from streamq.crashes import CHUNK, SOLO_MAX, Suspects
from streamq.message import Message


def batch(first: int, last: int) -> list[Message]:
    return [Message("t", 0, o, None, b"v") for o in range(first, last + 1)]


def shape(plan: list[tuple[str, list[Message]]]) -> list[tuple[str, int, int]]:
    return [(kind, run[0].offset, run[-1].offset) for kind, run in plan]


def test_a_small_range_goes_one_record_at_a_time() -> None:
    s = Suspects(10, 10 + SOLO_MAX - 1)
    assert not s.chunked
    plan = shape(s.plan(batch(5, 80)))
    assert plan[0] == ("normal", 5, 9)  # finished by the dead owner, just not committed
    assert plan[1 : 1 + SOLO_MAX] == [("solo", o, o) for o in range(10, 10 + SOLO_MAX)]
    assert plan[-1] == ("normal", 10 + SOLO_MAX, 80)


def test_a_big_range_goes_in_chunks_at_the_usual_speed() -> None:
    s = Suspects(100, 100 + 3 * CHUNK + 9)
    assert s.chunked
    plan = shape(s.plan(batch(100, 100 + 4 * CHUNK)))
    assert plan == [
        ("chunk", 100, 100 + CHUNK - 1),
        ("chunk", 100 + CHUNK, 100 + 2 * CHUNK - 1),
        ("chunk", 100 + 2 * CHUNK, 100 + 3 * CHUNK - 1),
        ("chunk", 100 + 3 * CHUNK, 100 + 3 * CHUNK + 9),
        ("normal", 100 + 3 * CHUNK + 10, 100 + 4 * CHUNK),
    ]
    assert all(s.starts(o) is None for o in range(100, 100 + 4 * CHUNK))


def test_a_chunk_that_was_running_at_a_death_goes_one_at_a_time() -> None:
    s = Suspects(0, 999, solo=[(256, 511)], counts={300: 1})
    plan = shape(s.plan(batch(250, 520), chunk=100))
    assert plan[0] == ("chunk", 250, 255)
    assert plan[1 : 1 + 256] == [("solo", o, o) for o in range(256, 512)]
    assert plan[-1] == ("chunk", 512, 520)
    assert s.starts(300) == 1 and s.starts(301) == 0 and s.starts(512) is None


def test_counts_and_chunks_outside_the_range_are_still_suspects() -> None:
    # a later owner died again: its polled range no longer covers the older markers
    s = Suspects(700, 650, solo=[(40, 41)], counts={45: 2})
    assert s.last == 45
    plan = shape(s.plan(batch(39, 46)))
    assert plan == [
        ("normal", 39, 39),
        ("solo", 40, 40),
        ("solo", 41, 41),
        ("normal", 42, 44),
        ("solo", 45, 45),
        ("normal", 46, 46),
    ]


def test_a_chunk_cut_is_no_larger_than_asked() -> None:
    s = Suspects(0, 10_000)
    sizes = [len(run) for kind, run in s.plan(batch(0, 999), chunk=64)]
    assert max(sizes) == 64 and sum(sizes) == 1000


def test_a_range_is_measured_in_records_not_offsets() -> None:
    """Redis stream offsets jump by 2**20 at each millisecond: 4 records are not 1M."""
    ms = 1 << 20
    s = Suspects(5 * ms + 7, 6 * ms + 1, records=4)
    assert not s.chunked
    assert s.starts(5 * ms + 9) == 0
    old = Suspects(5 * ms + 7, 6 * ms + 1)  # a note written before the count was kept
    assert old.chunked
