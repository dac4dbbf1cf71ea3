"""``--workers N`` process management, with real spawned processes and no broker."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

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


def _sigterm_self_when_up(where: Path, children: int) -> None:
    """SIGTERM this (supervising) process once ``children`` wrote their up-* files."""

    def kill_when_up() -> None:
        deadline = time.monotonic() + 30
        while len(list(where.glob("up-*"))) < children and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_up, daemon=True).start()


def test_sigterm_is_forwarded_to_children(tmp_path: Path) -> None:
    _sigterm_self_when_up(tmp_path, 2)
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


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def test_a_frozen_child_is_killed_when_it_outlives_the_stop(tmp_path: Path) -> None:
    """The forwarded SIGTERM cannot run in a child whose Python is frozen: SIGKILL ends it."""

    _sigterm_self_when_up(tmp_path, 2)
    code = supervise((T, "freeze"), (str(tmp_path),), 2, stop_timeout=1.0)
    pids = [int(p.name.split("-")[2]) for p in tmp_path.glob("up-*")]
    assert len(pids) == 2, "the children never started"
    assert code == 128 + signal.SIGKILL, f"exit code {code}: the children were not killed"
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.cython  # only the compiled watcher runs without the GIL
def test_a_frozen_child_exits_after_its_supervisor_was_killed(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG's SIGTERM cannot run in a frozen child; its GIL-free watcher can."""
    import subprocess
    import sys

    code = (
        "from streamq.runtime.supervisor import supervise; "
        f"supervise(({T!r}, 'freeze'), ({str(tmp_path)!r},), 1, stop_timeout=2.0)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("up-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    (up,) = tmp_path.glob("up-*")
    pid = int(up.name.split("-")[2])
    time.sleep(0.3)  # into pause()
    proc.kill()
    proc.wait(10)
    time.sleep(0.5)
    assert _alive(pid), "the child stopped on SIGTERM: it was not frozen, nothing was tested"
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the frozen child outlived its supervisor"


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("d.arm(0.5)", 1),
        ("d.arm(60); d.arm(0.5)", 1),  # the earliest deadline wins
        ("t = d.arm(60); d.arm(0.5); d.disarm(t)", 1),
        ("t = d.arm(0.5); d.disarm(t); import time; time.sleep(1.5); raise SystemExit(0)", 0),
    ],
)
def test_a_hard_deadline_ends_a_process_whose_python_is_frozen(script: str, code: int) -> None:
    import subprocess
    import sys

    program = (
        "import ctypes, streamq.deadline as d\n"
        f"{script}\n"
        "ctypes.PyDLL(None).pause()\n"  # holds the GIL: only a C thread can end this
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    if code:
        assert "Timeout" in done.stderr and "File " in done.stderr  # every thread's stack
