"""``check_run``: the offline invariant check of RELIABILITY.md section 3 over a ledger."""

from __future__ import annotations

from collections import defaultdict

from tests.integration.helpers import Entry


def check_run(
    entries: list[Entry], produced: set[int], poison: set[int] = frozenset()
) -> list[int]:
    """Assert I1 (no loss), I3 (per-key order) and I10 (offset -> id consistent).

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
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for e in sorted(entries, key=lambda e: e.mono_ns):
        if e.id not in seen:
            seen.add(e.id)
            first_seen[e.key].append(e.id)
    for key, ids in first_seen.items():
        assert ids == sorted(ids), f"I3 nonmonotonic: key {key} handled out of order"
    counts: dict[int, int] = defaultdict(int)
    for e in entries:
        counts[e.id] += 1
    return sorted(i for i, c in counts.items() if c > 1)
