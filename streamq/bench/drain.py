"""One side's drain, run to completion in this process (and its workers) and measured.

``run_bench`` calls ``drain`` in a fresh ``python -m streamq.bench --drain SIDE SPEC`` process
for Kafka and Redis, and in its own process for ``memory://``. Extra raw members of
``--workers N`` run as ``--raw-member SLOT SPEC`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import Any

from . import streamq_side
from .monitor import Monitor, _proc_mem
from .raw import raw_drain
from .spec import BenchSpec
from .workloads import LatencySender


def drain(spec: BenchSpec, side: str) -> dict[str, Any]:
    """Run one side's drain to completion in this process (and its workers); report it."""
    monitor = Monitor(spec)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if side == "raw":
            threads = [threading.Thread(target=raw_drain, args=(spec, 0, stop), daemon=True)]
            procs.extend(_spawn_raw(spec, slot) for slot in range(1, spec.workers))
            idle = _proc_mem(os.getpid(), "VmRSS:")
            threads[0].start()
            monitor.loop_thread = threads[0].native_id

            def finish() -> None:
                stop.set()
                for p in procs:
                    p.send_signal(signal.SIGTERM)

            result = monitor.measure(lambda: LatencySender(spec), finish)
            threads[0].join(30)
            for p in procs:
                p.wait(30)
        else:
            os.environ["STREAMQ_BENCH_SPEC"] = json.dumps(asdict(spec))
            monitor.loop_thread = threading.get_native_id()  # the worker's event loop
            app = streamq_side.build_app(spec, 0, local=True) if spec.workers == 1 else None
            idle = _proc_mem(os.getpid(), "VmRSS:")  # imports done, nothing consumed yet
            box: dict[str, Any] = {}

            def watch() -> None:
                try:
                    box["result"] = monitor.measure(
                        lambda: LatencySender(spec), lambda: os.kill(os.getpid(), signal.SIGTERM)
                    )
                except BaseException as exc:
                    box["error"] = exc
                    os.kill(os.getpid(), signal.SIGTERM)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            port = 0 if spec.metrics else None
            if app is not None:
                app.run(metrics_port=port)
            else:  # a module attribute: the spawned workers import it again by that name
                streamq_side.app.run(workers=spec.workers, metrics_port=port)
            watcher.join(30)
            streamq_side.close_tallies()
            if "error" in box:
                raise box["error"]
            result = box["result"]
        # before the consumer started, in the process that consumes (one worker only)
        result["rss_idle_mb"] = round(idle, 1) if spec.workers == 1 else None
        return result
    finally:
        stop.set()
        monitor.close()


def _spawn_raw(spec: BenchSpec, slot: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamq.bench", "--raw-member", str(slot), json.dumps(asdict(spec))]
    )
