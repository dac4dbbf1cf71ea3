"""Partition coordinates and raw headers: the types the compiled core needs at import.

They live apart from ``streamq.message`` so that ``streamq._dispatch`` can import them without
a cycle; ``streamq.message`` re-exports both.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Headers", "TopicPartition"]

# Raw headers as the broker gave them: order and duplicate keys preserved, so a DLQ copy is
# byte-exact. ``Message.headers`` is the convenient dict view.
Headers = list[tuple[str, bytes]]


class TopicPartition(NamedTuple):
    """One partition of one topic: the unit of ordering, ownership and commit."""

    topic: str
    partition: int
