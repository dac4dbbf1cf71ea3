"""Targets for the supervisor tests: spawned children import them by name."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


def touch_and_exit(slot: int, where: str) -> int:
    (Path(where) / f"{slot}-{os.getpid()}").touch()
    return 0


def crash_once(slot: int, where: str) -> int:
    marker = Path(where) / "crashed-once"
    if not marker.exists():
        marker.touch()
        os._exit(9)  # a hard crash, like a segfaulting handler
    (Path(where) / "second-run").touch()
    return 0


def exit_with(slot: int, code: int) -> int:
    return code


def wait_for_sigterm(slot: int, where: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    (Path(where) / f"up-{slot}").touch()
    stop.wait(30)
    (Path(where) / f"down-{slot}").touch()
    return 0


def record_environment(slot: int, where: str) -> int:
    index = os.environ.get("STREAMQ_WORKER_INDEX")
    (Path(where) / f"env-{slot}-{index}-pgrp-{os.getpgrp() == os.getpid()}").touch()
    return 0


def freeze(slot: int, where: str) -> int:
    """A worker whose Python can never run again, like one stuck in librdkafka #4041.

    It would exit at once on SIGTERM if Python could run its handler; but its main thread
    sits in a C call that holds the GIL, with SIGTERM blocked there, so the signal lands on
    another thread and the handler never runs.
    """
    import ctypes

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    (Path(where) / f"up-{slot}-{os.getpid()}").touch()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    ctypes.PyDLL(None).pause()  # PyDLL: the GIL stays held for the whole call
    return 0
