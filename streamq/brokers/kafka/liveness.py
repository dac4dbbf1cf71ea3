"""Liveness (B4): a lease that lapses when this process stood still past half a session.

A process frozen (SIGSTOP, a VM pause, swap) for longer than the session was removed from
the group: its partitions belong to someone else now. On waking, its threads run again at
once, and librdkafka reports the loss only a little later; the lanes would go on handling
records of partitions they lost. Kafka fences commits, not handlers, so the member keeps one
lease for all its partitions and lanes start no handler past its deadline.
"""

from __future__ import annotations

import threading
import time

from ...dispatch import Lease
from ...logs import get_logger

__all__ = ["Liveness"]

log = get_logger("streamq.kafka")


class Liveness:
    """A watchdog thread that moves ``lease`` on while this process runs."""

    def __init__(self, group: str, session_ms: float, heartbeat_ms: float) -> None:
        self._group = group
        self._stall_s = session_ms / 2000
        # How long a loss may take to be reported after waking: the heartbeat that learns it
        # may first wait for a reconnect (requests in flight timed out during the stall).
        # The 2 s grace before fits a CI failure not reproduced since (tests/fault, zombie
        # fencing): 26 handlers of 20 ms, as if it ended 0.5 s before the loss was reported.
        self._grace_s = min(session_ms / 1000, max(5.0, 3 * heartbeat_ms / 1000))
        self.lease = Lease(None, time.monotonic() + self._stall_s)
        self._suspect_until = 0.0
        self._stopped = threading.Event()
        self._watchdog = threading.Thread(
            target=self._watch, name=f"streamq-liveness[{group}]", daemon=True
        )
        self._watchdog.start()

    def _watch(self) -> None:
        """Keep the lease ahead of the clock while this process runs.

        The lease is never more than half a session ahead; after a stall of that length it
        is left expired until the group confirms the assignment (a rebalance callback) or,
        when no loss is reported within a grace of three heartbeats (at least 5 s, at most
        the session), until it is clear none happened.
        """
        last = time.monotonic()
        while not self._stopped.wait(0.1):
            now = time.monotonic()
            if now - last > self._stall_s:
                self._suspect_until = now + self._grace_s
                log.warning(
                    "group %s: this process stood still for %.1fs (more than half the session "
                    "timeout); starting no handler until the group confirms its partitions",
                    self._group, now - last,
                )  # fmt: skip
            last = now
            if now >= self._suspect_until:
                self.lease.deadline = now + self._stall_s

    def confirm(self) -> None:
        """A rebalance callback: the group told this member what it owns now."""
        self._suspect_until = 0.0

    def stop(self) -> None:
        self._stopped.set()
