"""``--workers N`` process management, with real spawned processes and no broker."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from streamq.runtime.supervisor import supervise

T = "tests.unit.supervised"


def test_children_that_finish_cleanly_end_the_run(tmp_path: Path) -> None:
    assert supervise((T, "touch_and_exit"), (str(tmp_path),), 3) == 0
    files = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert files == ["0", "1", "2"]
    assert len({p.name.split("-")[1] for p in tmp_path.iterdir()}) == 3  # three processes


def test_children_know_their_index_and_own_their_process_group(tmp_path: Path) -> None:
    assert supervise((T, "record_environment"), (str(tmp_path),), 2) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "env-0-0-pgrp-True",
        "env-1-1-pgrp-True",
    ]


def test_a_crashed_child_is_restarted_with_backoff(tmp_path: Path) -> None:
    assert supervise((T, "crash_once"), (str(tmp_path),), 1) == 0
    assert (tmp_path / "second-run").exists()


def test_final_codes_are_not_restarted_and_are_returned() -> None:
    assert supervise((T, "exit_with"), (2,), 2) == 2  # a config error would fail again


def test_without_restart_the_failure_code_is_returned() -> None:
    assert supervise((T, "exit_with"), (7,), 2, restart=False) == 7


def test_sigterm_is_forwarded_to_children(tmp_path: Path) -> None:
    def kill_when_up() -> None:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("up-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_up, daemon=True).start()
    assert supervise((T, "wait_for_sigterm"), (str(tmp_path),), 2) == 0
    assert sorted(p.name for p in tmp_path.glob("down-*")) == ["down-0", "down-1"]


def test_children_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed supervisor must not leave orphans holding partitions (A3)."""
    import subprocess
    import sys

    code = (
        "from streamq.runtime.supervisor import supervise; "
        f"supervise(({T!r}, 'wait_for_sigterm'), ({str(tmp_path)!r},), 2)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("up-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list(tmp_path.glob("up-*"))) == 2, "children never started"
    proc.kill()
    proc.wait(10)
    while len(list(tmp_path.glob("down-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(p.name for p in tmp_path.glob("down-*")) == ["down-0", "down-1"]
