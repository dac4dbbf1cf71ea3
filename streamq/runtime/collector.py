"""A poll with Python's cyclic garbage collector held off.

The clients build tracked objects per record: confluent-kafka's ``Message`` is a GC object,
and so are the lists and tuples of a redis-py XREADGROUP reply. A batch of 2,000 of them
crosses the youngest generation's threshold (700 allocations) three times while it is
built; every tenth of those collections promotes the batch's survivors, and every 10,000 or
so promoted objects make a full collection, which walks every object of the worker (14 to
32 ms each here). Measured on Apache Kafka with ``streamq bench --handler json``: 535
young and 4 full collections per 500,000 records, about 130 ms of collecting in all: 0.25 us
of a 1.8 us record.

They all die inside the poll: the backend turns them into streamq ``Message`` objects, which
the collector does not track (``ext/_dispatch.pyx``). Allocated and freed while the collector
is off, they leave its counters where they were, so no collection comes due and none is
skipped: 80 young and no full collections for the same drain.

While the collector is off (one poll, at most ``poll_timeout`` plus any rebalance callback
the poll serves), objects the handlers allocate on the event loop thread are counted but not
collected; the first allocation after the poll collects them if they are due. A collector an
application turned off stays off. One that another thread turns off during a poll is turned
back on when the poll ends: an application that wants it off should turn it off first.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from ..message import Message

__all__ = ["poll_uncollected"]


def poll_uncollected(
    poll: Callable[[int, float], list[Message]], max_records: int, timeout: float
) -> list[Message]:
    """``poll(max_records, timeout)`` with the collector off, unless it already was."""
    if not gc.isenabled():
        return poll(max_records, timeout)
    gc.disable()
    try:
        return poll(max_records, timeout)
    finally:
        gc.enable()
