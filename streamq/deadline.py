"""Hard deadlines that need no GIL, for stops that must end whatever hangs.

A stop can hang where no Python code can help: a C call that never returns while holding
the GIL freezes every thread of the process, including the watchdogs written in Python and
the signal handlers (librdkafka #4041 did exactly that inside ``Consumer.close()``).
``faulthandler``'s timer is a C thread that needs no GIL: when it fires it writes every
thread's stack to stderr and exits the process with code 1. There is one such timer per
process, so everyone who needs a deadline arms it through here and the earliest one wins.
"""

from __future__ import annotations

import faulthandler
import itertools
import threading
import time

__all__ = ["EXIT_DEADLINE", "arm", "disarm"]

EXIT_DEADLINE = 1  # faulthandler's: the process was stuck past a hard deadline

_lock = threading.Lock()
_armed: dict[int, float] = {}  # token -> monotonic deadline
_tokens = itertools.count(1)


def arm(seconds: float) -> int:
    """Exit the process (code 1, every thread's stack on stderr) unless disarmed in time."""
    with _lock:
        token = next(_tokens)
        _armed[token] = time.monotonic() + seconds
        _apply()
    return token


def disarm(token: int) -> None:
    with _lock:
        if _armed.pop(token, None) is not None:
            _apply()


def _apply() -> None:
    if not _armed:
        faulthandler.cancel_dump_traceback_later()
        return
    left = min(_armed.values()) - time.monotonic()
    faulthandler.dump_traceback_later(max(left, 0.001), exit=True)
