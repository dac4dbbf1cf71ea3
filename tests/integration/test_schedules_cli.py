"""``streamq schedules list|pause|resume|trigger`` against a running schedule, both brokers.

One worker runs tests/apps/jobs.py (a 1 s job with a tick ledger). ``list --json`` names the
owner and the job's last and next tick; ``pause`` is applied by the owner before the command
returns, and no tick fires from then until ``resume`` is sent; ``trigger`` fires the job once
more, with ``Tick.triggered``. Mistakes (an unknown job) exit 2 with one line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fault.test_schedules import read_ticks
from tests.integration.helpers import app_env, app_spec, start_worker, streamq_cmd, unique
from tests.integration.helpers import wait_until as until

pytestmark = pytest.mark.timeout(120)


def test_list_pause_resume_and_trigger_steer_the_owner(broker, tmp_path: Path) -> None:
    ledger = tmp_path / "ticks"
    spec = app_spec("jobs")
    env = spec.environ(app_env(broker.url, "unused", unique("cli-jobs"), ledger))
    worker = start_worker(tmp_path, spec, env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(streamq_cmd("schedules", *args), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    try:
        until(lambda: len(read_ticks(ledger)) >= 2, 60, "two ticks")
        listed = cli("list", spec.spec, "--json")
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert doc["owner"]["member"].endswith(f"-{worker.pid}")
        (job,) = doc["jobs"]
        assert job["job"] == "beat" and job["schedule"] == "every 1s" and not job["paused"]
        assert job["last_tick"] < job["next_tick"]

        paused = cli("pause", spec.spec, "beat")
        assert paused.returncode == 0 and "pause applied" in paused.stdout, paused.stderr
        paused_at = time.time_ns() // 1_000_000
        time.sleep(2.5)  # two or three ticks fall due while paused
        assert json.loads(cli("list", spec.spec, "--json").stdout)["jobs"][0]["paused"]
        resuming_at = time.time_ns() // 1_000_000  # the resume may apply before it returns
        resumed = cli("resume", spec.spec, "beat")
        resumed_at = time.time_ns() // 1_000_000
        assert resumed.returncode == 0 and "resume applied" in resumed.stdout, resumed.stderr
        quiet = [t for t in read_ticks(ledger) if paused_at <= t.fired <= resuming_at]
        assert not quiet, f"ticks fired while paused: {quiet}"

        triggered = cli("trigger", spec.spec, "beat")
        assert triggered.returncode == 0 and "trigger applied" in triggered.stdout
        until(lambda: any(t.triggered for t in read_ticks(ledger)), 30, "the triggered run")
        until(lambda: any(t.fired > resumed_at and not t.triggered for t in read_ticks(ledger)),
              30, "ticks after the resume")  # fmt: skip

        unknown = cli("pause", spec.spec, "nope")
        assert unknown.returncode == 2
        assert "has no job 'nope' (its jobs: beat)" in unknown.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        code, out = worker.finish(60)
    assert code == 0, out[-3000:]
    assert [t.triggered for t in read_ticks(ledger)].count(True) == 1
