"""The whole benchmark: fill once, then drain raw and streamq alternately, round by round.

Each drain gets a fresh consumer group, latency topic (and output topic, under
``--transform``) and zeroed counters; Kafka and Redis drains run in a fresh subprocess each,
``memory://`` ones in this process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from multiprocessing import shared_memory
from typing import Any

from .drain import drain
from .outputs import count_outputs
from .report import summarize
from .spec import BenchSpec
from .tally import _COUNT, _HEADER, _SLOT, _view
from .workloads import fill

Progress = Callable[[str, int, int], None]


def run_bench(spec: BenchSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Fill once, then drain raw and streamq alternately; the summary compares medians."""
    from ..brokers import connect

    spec.validate()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    spec = replace(spec, topic=topic)
    fill(spec)
    admin = connect(spec.broker).admin()
    runs: list[dict[str, Any]] = []
    sides = ["raw", "streamq"] if spec.raw else ["streamq"]
    shm = shared_memory.SharedMemory(create=True, size=(_HEADER + spec.slots * _SLOT) * 8)
    view = _view(shm)
    try:
        for r in range(spec.rounds):
            for side in sides:
                for i in range(len(view)):
                    view[i] = 0
                one = replace(spec, shm=shm.name, group=f"{topic}-{side}-{r}")
                if spec.latency_messages:
                    one = replace(one, latency_topic=f"{topic}-lat-{side}-{r}")
                    admin.create_topic(one.latency_topic, spec.partitions)
                if spec.transform:
                    one = replace(one, output_topic=f"{topic}-out-{side}-{r}")
                    admin.create_topic(one.output_topic, spec.partitions)
                result = _drain_with_progress(one, side, view, progress)
                result |= {"side": side, "round": r + 1}
                runs.append(result)
    finally:
        view.release()
        shm.close()
        shm.unlink()
    return summarize(spec, runs)


def _drain_with_progress(
    spec: BenchSpec, side: str, view: Any, progress: Progress | None
) -> dict[str, Any]:
    finished = threading.Event()

    def report() -> None:
        while not finished.wait(0.1):
            if progress is not None:
                count = sum(view[_HEADER + s * _SLOT + _COUNT] for s in range(spec.slots))
                progress(side, min(count, spec.messages), spec.messages)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        if spec.output_topic:
            with count_outputs(spec, view):
                return _drain_in_subprocess(spec, side)
        if spec.broker.startswith("memory://"):
            quiet = logging.getLogger("streamq")
            level = quiet.level
            quiet.setLevel(logging.WARNING)  # the table is the output, not the worker's log
            try:
                return drain(spec, side)
            finally:
                quiet.setLevel(level)
        return _drain_in_subprocess(spec, side)
    finally:
        finished.set()
        reporter.join()


def _drain_in_subprocess(spec: BenchSpec, side: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "streamq.bench", "--drain", side, json.dumps(asdict(spec))],
        capture_output=True,
        check=False,
    )
    lines = out.stdout.decode().strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(
            f"the {side} drain failed (exit {out.returncode}): "
            + out.stderr.decode(errors="replace")[-2000:]
        )
    return dict(json.loads(lines[-1]))
