"""``--workers N``: N member processes of the same consumer groups, kept alive.

Scaling is the broker's consumer group: each child is an ordinary member. The supervisor
only starts children (spawned, never forked: a fork after librdkafka or redis-py started
threads inherits their locks), forwards SIGINT/SIGTERM once for a graceful drain, restarts a
child that crashed with exponential backoff, and returns the exit code for the CLI. Children
die with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no orphan holding
partitions, and they run in their own process group so a terminal's Ctrl-C reaches them
once, through the supervisor.

Every stop is bounded, even for a child whose Python is frozen (a C call holding the GIL
forever cannot run a signal handler): the supervisor SIGKILLs a child still alive
``stop_timeout`` seconds after it forwarded the stop, and a child whose supervisor died
exits by itself ``stop_timeout`` seconds later, from a thread that never takes the GIL
(``streamq._dispatch.watch_parent``; the pure-Python fallback needs the GIL).
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from .._native import native
from ..errors import EXIT_FINAL, EXIT_ORPHANED
from ..logs import get_logger

__all__ = ["supervise"]

log = get_logger("streamq.supervisor")

_PR_SET_PDEATHSIG = 1


# A child that ran this long before failing starts its backoff over.
_HEALTHY_AFTER = 60.0


def _watch_parent_py(parent: int, grace_s: float, code: int) -> None:
    """The fallback of ``_dispatch.watch_parent``: the same, but it needs the GIL."""
    gone_at = -1.0
    while True:
        if os.getppid() != parent:
            now = time.monotonic()
            if gone_at < 0:
                gone_at = now
            elif now - gone_at >= grace_s:
                os._exit(code)
        time.sleep(0.2)


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(
    target: tuple[str, str], args: tuple[Any, ...], slot: int, parent: int, stop_timeout: float
) -> None:
    os.setpgrp()
    _die_with_parent(parent)
    watch = getattr(native, "watch_parent", None) or _watch_parent_py
    threading.Thread(
        target=watch, args=(parent, stop_timeout, EXIT_ORPHANED), name="streamq-orphan-watch",
        daemon=True,
    ).start()  # fmt: skip
    os.environ["STREAMQ_WORKER_INDEX"] = str(slot)
    module, name = target
    fn = getattr(importlib.import_module(module), name)
    sys.exit(fn(slot, *args))


def supervise(
    target: tuple[str, str],
    args: tuple[Any, ...],
    workers: int,
    *,
    restart: bool = True,
    max_backoff: float = 30.0,
    on_exit: Callable[[int], None] | None = None,
    stop_timeout: float = 60.0,
) -> int:
    """Run ``module.function(slot, *args)`` in ``workers`` spawned processes; return a code.

    A child that exits with a final code (0 done, 2 configuration, 4 halted) is not
    restarted; one that crashed is, after a growing delay, so a crash loop cannot spin. The
    result is 0 if every child ended with 0, else the first other code. ``on_exit(pid)``
    runs for every child that ended (the metrics server drops its gauges). A child still
    alive ``stop_timeout`` seconds after the stop was forwarded is SIGKILLed.
    """
    ctx = multiprocessing.get_context("spawn")
    parent = os.getpid()
    stopping = False
    kill_at = float("inf")
    children: dict[int, tuple[BaseProcess, float]] = {}
    failures = [0] * workers
    restart_at: dict[int, float] = {}
    result = 0

    def spawn(slot: int) -> None:
        proc = ctx.Process(
            target=_child,
            args=(target, args, slot, parent, stop_timeout),
            name=f"streamq-worker-{slot}",
        )
        proc.start()
        children[slot] = (proc, time.monotonic())
        log.info("worker %d started (pid %s)", slot, proc.pid)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping, kill_at
        if not stopping:
            kill_at = time.monotonic() + stop_timeout
        stopping = True
        restart_at.clear()
        for proc, _ in children.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for slot in range(workers):
            spawn(slot)
        while children or restart_at:
            now = time.monotonic()
            if now >= kill_at:
                kill_at = float("inf")
                for slot, (proc, _) in children.items():
                    if proc.is_alive() and proc.pid is not None:
                        log.error(
                            "worker %d (pid %s) still running %.0fs after the stop: killing it; "
                            "its uncommitted records will be redelivered",
                            slot, proc.pid, stop_timeout,
                        )  # fmt: skip
                        os.kill(proc.pid, signal.SIGKILL)
            for slot, at in list(restart_at.items()):
                if at <= now:
                    del restart_at[slot]
                    spawn(slot)
            for slot, (proc, started) in list(children.items()):
                proc.join(0.05)
                if proc.exitcode is None:
                    continue
                del children[slot]
                if on_exit is not None and proc.pid is not None:
                    on_exit(proc.pid)
                code = proc.exitcode if proc.exitcode >= 0 else 128 - proc.exitcode
                if stopping and proc.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                    # The forwarded signal arrived before the child set up its handlers:
                    # it was still starting, held no partitions, and lost nothing.
                    log.info("worker %d stopped while starting", slot)
                    code = 0
                if code in EXIT_FINAL or stopping or not restart:
                    if code != 0 and result == 0:
                        result = code
                    continue
                if now - started >= _HEALTHY_AFTER:
                    failures[slot] = 0
                failures[slot] += 1
                delay = min(max_backoff, 0.5 * 2 ** (failures[slot] - 1))
                log.warning(
                    "worker %d (pid %s) exited with %d; restarting in %.1fs (failure %d)",
                    slot, proc.pid, code, delay, failures[slot],
                )  # fmt: skip
                restart_at[slot] = now + delay
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return result
