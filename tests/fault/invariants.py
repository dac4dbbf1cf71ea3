"""``check_run``: the offline invariant check of RELIABILITY.md section 3 over a ledger."""

from __future__ import annotations

from tests.integration.helpers import Entry, check_per_key_order, duplicates


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
    check_per_key_order(entries)  # I3
    return duplicates(entries)
