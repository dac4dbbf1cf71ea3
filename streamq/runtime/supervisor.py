"""``--workers N``: N member processes of the same consumer group, kept alive.

Scaling is the broker's consumer group: each child is an ordinary member. The supervisor
only starts children, forwards SIGINT/SIGTERM to them, restarts a child that died with
exponential backoff, and exits with the first failing child's code. Children die with the
supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no orphan holding partitions.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

__all__ = ["supervise"]

log = logging.getLogger("streamq.supervisor")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort only
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(target: Callable[[], int], parent: int) -> None:
    _die_with_parent(parent)
    code = 0
    try:
        code = target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        code = 1
    os._exit(code)


def supervise(
    target: Callable[[], int],
    workers: int,
    *,
    restart: bool = True,
    max_backoff: float = 30.0,
) -> int:
    """Run ``target`` in ``workers`` forked processes; return the exit code for the CLI.

    A child that exits 0 is done (``--until-idle``). One that fails is restarted after a
    growing delay while ``restart`` is set, so a crash loop cannot spin.
    """
    ctx = multiprocessing.get_context("fork")
    parent = os.getpid()
    stopping = False
    children: dict[int, BaseProcess] = {}
    failures = [0] * workers
    restart_at: dict[int, float] = {}
    result = 0

    def spawn(slot: int) -> None:
        proc = ctx.Process(target=_child, args=(target, parent), name=f"streamq-worker-{slot}")
        proc.start()
        children[slot] = proc
        log.info("worker %d started (pid %s)", slot, proc.pid)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for slot in range(workers):
            spawn(slot)
        while children or (restart_at and not stopping):
            now = time.monotonic()
            for slot, at in list(restart_at.items()):
                if at <= now and not stopping:
                    del restart_at[slot]
                    spawn(slot)
            for slot, proc in list(children.items()):
                proc.join(0.05)
                if proc.exitcode is None:
                    continue
                del children[slot]
                code = proc.exitcode if proc.exitcode >= 0 else 128 - proc.exitcode
                if code == 0 or stopping or not restart:
                    if code != 0 and result == 0:
                        result = code
                    continue
                failures[slot] += 1
                delay = min(max_backoff, 0.5 * 2 ** (failures[slot] - 1))
                log.warning(
                    "worker %d (pid %s) exited with %d; restarting in %.1fs (failure %d)",
                    slot, proc.pid, code, delay, failures[slot],
                )  # fmt: skip
                restart_at[slot] = now + delay
            if not children and restart_at and stopping:
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return result
