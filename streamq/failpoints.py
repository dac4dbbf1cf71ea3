"""Deterministic crash points for fault tests, in the spirit of tikv/fail-rs.

``STREAMQ_FAILPOINTS="after_handle:exit@3,after_commit:exit@1"`` makes the worker process
exit with code 137 (as if SIGKILLed) the 3rd time it passes ``after_handle``, or the 1st time
it passes ``after_commit``. Points are checked once per unit or slice, never per record, and
only when the variable is set: ``ACTIVE`` is False in production and costs one global read.

Points, in the order a record meets them:
``after_poll``    records fetched, not yet dispatched (poll thread)
``after_handle``  a slice of records handled, not yet marked or reported (loop thread)
``after_mark``    their dedup keys marked, not yet reported for commit (loop thread)
``after_dlq``     a DLQ record acknowledged, not yet reported (loop thread)
``in_transaction`` exactly once: outputs and offsets sent in a transaction not yet committed
                  (Kafka), or about to run the commit script (Redis); only transactions
                  with outputs count, so ``exit@N`` is the Nth that publishes (poll thread)
``after_commit``  a commit sent (acknowledged, when synchronous) (poll thread)
``in_revoke``     inside a revoke, before its synchronous commit (poll thread)
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["ACTIVE", "POINTS", "hit"]

POINTS = (
    "after_poll",
    "after_handle",
    "after_mark",
    "after_dlq",
    "in_transaction",
    "after_commit",
    "in_revoke",
)
EXIT_CODE = 137


def _parse(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition(":")
        kind, _, count = action.partition("@")
        if name not in POINTS or kind != "exit" or not count.isdigit() or int(count) < 1:
            raise ValueError(
                f"STREAMQ_FAILPOINTS: {item!r} is not <point>:exit@<n> with a point in {POINTS}"
            )
        out[name] = int(count)
    return out


_PLAN = _parse(os.environ.get("STREAMQ_FAILPOINTS", ""))
_HITS: dict[str, int] = dict.fromkeys(_PLAN, 0)
_LOCK = threading.Lock()
ACTIVE = bool(_PLAN)


def hit(name: str) -> None:
    """Count a pass through ``name``; exit the process on the planned pass."""
    if name not in _PLAN:
        return
    with _LOCK:
        _HITS[name] += 1
        if _HITS[name] == _PLAN[name]:
            sys.stderr.write(f"streamq: failpoint {name} fired on pass {_HITS[name]}\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
