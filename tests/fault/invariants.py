"""``check_run``: the offline invariant check of RELIABILITY.md section 3 over a ledger.

I2 (never commit ahead) needs live samples of the broker: ``tests.fault.observer``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

from tests.integration.helpers import Entry, check_per_key_order, duplicates


def check_run(
    entries: list[Entry],
    produced: set[int],
    poison: set[int] = frozenset(),
    *,
    starts: list[Entry] | None = None,
    rewinds_within_a_member: bool = False,
    overlap_ok: Iterable[int] = (),
) -> list[int]:
    """Assert I1 (no loss), I3 (order), I10 (offset -> id consistent) and, given the ``S``
    lines, I6 (one handler per partition at a time).

    ``rewinds_within_a_member``: the scenario lets a member see its own partition again from
    the last commit without anyone else owning it in between (its session expired while the
    broker was frozen, say); otherwise such a rewind fails I3. ``overlap_ok``: pids allowed
    to overlap another member (a zombie inside its injected window).

    Returns the duplicated ids, so each scenario can bound them its own way (I4).
    """
    handled = {e.id for e in entries}
    lost = sorted(produced - poison - handled)
    assert not lost, f"I1 lost-write: {len(lost)} ids never handled, first {lost[:10]}"
    assert not (handled & poison), "I5: a poison record reached the handler"
    by_coord: dict[tuple[int, int], int] = {}
    for e in entries:
        known = by_coord.setdefault((e.partition, e.offset), e.id)
        assert known == e.id, f"I10 inconsistent-offsets at {e.partition}@{e.offset}"
    check_per_key_order(entries)  # I3, per key
    check_epochs(entries, rewinds_within_a_member)  # I3, per partition
    if starts is not None:
        check_exclusive(starts, entries, set(overlap_ok))  # I6
    return duplicates(entries)


def first_ends(entries: list[Entry]) -> dict[tuple[int, int], int]:
    """(partition, offset) -> when its first handling ended (mono ns)."""
    out: dict[tuple[int, int], int] = {}
    for e in entries:
        key = (e.partition, e.offset)
        out[key] = min(out.get(key, e.mono_ns), e.mono_ns)
    return out


def handled_offsets(first_end: dict[tuple[int, int], int]) -> dict[int, list[int]]:
    """Per partition, the handled offsets in order."""
    out: dict[int, list[int]] = defaultdict(list)
    for partition, offset in sorted(first_end):
        out[partition].append(offset)
    return out


def check_epochs(entries: list[Entry], rewinds_within_a_member: bool = False) -> int:
    """I3 per partition, for every handling, not only the first of each id.

    An ownership epoch is a member's run of handlings of a partition with nobody else
    handling it in between. Inside one, offsets strictly increase, and no offset is stepped
    over unless it was already handled before (a dedup skip) or never is (the DLQ). A member
    may only go back at the start of an epoch. Returns the number of epochs seen.
    """
    first_end = first_ends(entries)
    offsets = handled_offsets(first_end)
    epochs = 0
    by_partition: dict[int, list[Entry]] = defaultdict(list)
    for e in sorted(entries, key=lambda e: e.mono_ns):
        by_partition[e.partition].append(e)
    for partition, seq in by_partition.items():
        offs = offsets[partition]
        prev: Entry | None = None
        for e in seq:
            if prev is None or prev.pid != e.pid:
                epochs += 1
                prev = e
                continue
            if e.offset <= prev.offset:
                assert rewinds_within_a_member, (
                    f"I3 nonmonotonic-poll: pid {e.pid} handled partition {partition} offset "
                    f"{e.offset} after {prev.offset}, with nobody else owning it in between"
                )
                epochs += 1
                prev = e
                continue
            lo = bisect.bisect_right(offs, prev.offset)
            hi = bisect.bisect_left(offs, e.offset)
            for skipped in offs[lo:hi]:
                assert first_end[(partition, skipped)] < e.mono_ns, (
                    f"I3 int-poll-skip: pid {e.pid} went from offset {prev.offset} to "
                    f"{e.offset} on partition {partition}, stepping over {skipped}, which was "
                    "handled only later"
                )
            prev = e
    return epochs


def handling_spans(starts: list[Entry], ends: list[Entry]) -> dict[int, list[tuple[int, int, int]]]:
    """Per partition, every handling as (start ns, end ns, pid), sorted by start.

    A handling is the span from its first ``S`` line (retries write more) to its ``E`` line;
    a start with no end (the process was killed) has no known end and is left out.
    """
    pending: dict[tuple[int, int, int], int] = {}  # (pid, partition, offset) -> first S
    spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    events = sorted([(s.mono_ns, 0, s) for s in starts] + [(e.mono_ns, 1, e) for e in ends],
                    key=lambda x: (x[0], x[1]))  # fmt: skip
    for t, kind, e in events:
        key = (e.pid, e.partition, e.offset)
        if kind == 0:
            pending.setdefault(key, t)
        elif key in pending:
            spans[e.partition].append((pending.pop(key), t, e.pid))
    for found in spans.values():
        found.sort()
    return spans


def check_exclusive(starts: list[Entry], ends: list[Entry], overlap_ok: set[int]) -> int:
    """I6: no two processes handle one partition at the same time. Returns the number of
    handlings checked."""
    checked = 0
    for partition, found in handling_spans(starts, ends).items():
        latest_end, latest_pid = -1, -1
        for start, end, pid in found:
            checked += 1
            if start < latest_end and pid != latest_pid:
                assert pid in overlap_ok or latest_pid in overlap_ok, (
                    f"I6 two owners: pids {latest_pid} and {pid} both handled partition "
                    f"{partition} at once ({(latest_end - start) / 1e6:.1f} ms overlap)"
                )
            if end > latest_end:
                latest_end, latest_pid = end, pid
    return checked


def check_leases(
    samples: list[tuple[int, int, int, int | None]], starts: list[Entry], ends: list[Entry]
) -> int:
    """I6 against the Redis lease keys (B10): while one member held a partition's lease, no
    other member was handling that partition.

    A sample is (before ns, after ns, partition, holder pid or None): the lease was read
    somewhere between the two instants, so only a handling spanning both is in conflict.
    Returns the number of samples that found a holder.
    """
    spans = handling_spans(starts, ends)
    longest = {p: max((e - s for s, e, _ in found), default=0) for p, found in spans.items()}
    first = {p: [s for s, _, _ in found] for p, found in spans.items()}
    held = 0
    for before, after, partition, holder in samples:
        if holder is None or partition not in spans:
            continue
        held += 1
        found = spans[partition]
        i = bisect.bisect_right(first[partition], before) - 1
        while i >= 0 and found[i][0] >= before - longest[partition]:
            _, end, pid = found[i]
            assert not (end >= after and pid != holder), (
                f"I6 lease: pid {pid} handled partition {partition} while pid {holder} held "
                f"its lease"
            )
            i -= 1
    return held
