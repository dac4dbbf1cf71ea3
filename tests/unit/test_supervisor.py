"""``--workers N`` process management, with real child processes and no broker."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from streamq.runtime.supervisor import supervise


def test_children_that_finish_cleanly_end_the_run(tmp_path: Path) -> None:
    def target() -> int:
        (tmp_path / str(os.getpid())).touch()
        return 0

    assert supervise(target, 3) == 0
    assert len(list(tmp_path.iterdir())) == 3  # three distinct processes ran


def test_a_crashed_child_is_restarted_with_backoff(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"

    def target() -> int:
        if not marker.exists():
            marker.touch()
            os._exit(9)  # a hard crash, like a segfaulting handler
        (tmp_path / "second-run").touch()
        return 0

    assert supervise(target, 1) == 0
    assert (tmp_path / "second-run").exists()


def test_without_restart_the_failure_code_is_returned() -> None:
    assert supervise(lambda: 7, 2, restart=False) == 7


def test_sigterm_is_forwarded_to_children(tmp_path: Path) -> None:
    def target() -> int:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        (tmp_path / f"up-{os.getpid()}").touch()
        stop.wait(30)
        (tmp_path / f"down-{os.getpid()}").touch()
        return 0

    def kill_when_up() -> None:
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("up-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_up, daemon=True).start()
    assert supervise(target, 2) == 0
    assert len(list(tmp_path.glob("down-*"))) == 2  # both children stopped gracefully
