"""``streamq bench`` against the real brokers: both sides drain every record, and say so.

No speed is asserted (the machines are shared and noisy); what must hold is that each drain
handled exactly the backlog, timed the latency records it produced, and reported the ratio.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Broker

from .helpers import streamq_cmd

pytestmark = [pytest.mark.timeout(300)]


def _bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        streamq_cmd("bench", *args, "--json", str(out)),
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streamq / raw" in proc.stdout or "--no-raw" in args
    return dict(json.loads(out.read_text()))


def test_raw_and_streamq_drain_the_same_backlog(broker: Broker, tmp_path: Path) -> None:
    result = _bench(
        tmp_path, "--broker", broker.url, "--messages", "3000", "--rounds", "1",
        "--latency-messages", "100", "--latency-rate", "500",
    )  # fmt: skip
    runs = {r["side"]: r for r in result["runs"]}
    assert set(runs) == {"raw", "streamq"}
    for side, run in runs.items():
        assert run["handled"] == 3000, side
        assert run["latency_samples"] == 100, side
        assert run["msg_s"] > 0 and run["cpu_s_per_m"] is not None and run["rss_peak_mb"] > 0
        assert run["p50_ms"] is not None and run["p50_ms"] <= run["p99_ms"]
        # CPU by thread role: where each side's handlers run, and librdkafka's own threads
        roles = set(run["thread_cpu_s_per_m"])
        assert {"loop", "other"} <= roles, (side, roles)
        assert ("poll" in roles) == (side == "streamq"), (side, roles)
        assert ("client" in roles) == broker.url.startswith("kafka"), (side, roles)
    assert result["summary"]["ratio"] > 0
    assert len(result["summary"]["round_ratios"]) == 1
    assert result["implementation"] in ("cython", "python")


@pytest.mark.parametrize(
    "args",
    [
        # 10 ms a record: the backlog outlasts the second member's join, so both handle
        ("--workers", "2", "--handler", "sleep:10"),
        ("--executor", "processes", "--handler", "cpu"),
        ("--executor", "threads", "--ordering", "key", "--handler", "sleep:1"),
    ],
    ids=["two-workers", "process-pool", "thread-key-lanes"],
)
def test_streamq_options_drain_everything(
    broker: Broker, tmp_path: Path, args: tuple[str, ...]
) -> None:
    n = "1000" if "--workers" in args else "600"
    result = _bench(
        tmp_path, "--broker", broker.url, "--messages", n, "--rounds", "1", "--no-raw",
        "--latency-messages", "0", *args,
    )  # fmt: skip
    (run,) = result["runs"]
    assert run["side"] == "streamq" and run["handled"] == int(n)
    if "--workers" in args:
        assert run["workers"] == 2  # both member processes took a counter slot
        assert run["members_handling"] == 2  # and both handled records
    if "processes" in args:
        assert run["workers"] >= 2  # the worker and its pool processes


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_transform_drains_end_with_every_output_visible(
    broker: Broker, tmp_path: Path, guarantee: str
) -> None:
    result = _bench(
        tmp_path, "--broker", broker.url, "--messages", "600", "--rounds", "1",
        "--latency-messages", "0", "--transform", "--guarantee", guarantee,
    )  # fmt: skip
    runs = {r["side"]: r for r in result["runs"]}
    assert set(runs) == {"raw", "streamq"}
    for side, run in runs.items():
        assert run["handled"] == 600, side
        # one output per input, counted by a reader (read_committed on Kafka): none missing,
        # none twice
        assert run["outputs"] == 600, side
    assert result["spec"]["guarantee"] == guarantee
    assert result["summary"]["ratio"] > 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--handler", "sleep:x"), "sleep takes milliseconds"),
        (("--workers", "2"), "memory:// lives in one process"),
        (("--dedup", "sqlite"), "--dedup"),
        (("--transform",), "memory:// has no raw producer loop"),
        (("--guarantee", "exactly_once"), "exactly_once needs --transform"),
        (("--transform", "--broker", "redis://x", "--handler", "noop"), "--handler json or cpu"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    proc = subprocess.run(
        streamq_cmd("bench", "--messages", "10", *args),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
