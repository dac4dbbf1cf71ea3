"""The periodic-jobs tests' app (issue 19): one job, ``beat``, keeping a ledger of its ticks.

Each run writes ``T PID AT_MS FIRED_MS TRIGGERED`` to ``LEDGER`` with one ``os.write`` (the
line survives a SIGKILL that lands after it): the tick it ran for, by which process, and when
it started, in wall-clock milliseconds like the tick itself. ``JOB_EVERY`` (seconds, default
1) and ``JOB_MISSED`` (default ``once``) shape the job; the app's name, and so its schedule's
group and topic (``<GROUP>.schedule``), comes from ``GROUP``. Settings: ``APP_KAFKA``,
``APP_EXTRA`` (more ``App`` keywords).
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

DEFAULTS = {"lease_ttl": 3}

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    **{**DEFAULTS, **setting("extra", {})},
)
ledger = Ledger()


@app.every(float(os.environ.get("JOB_EVERY", "1")), missed=os.environ.get("JOB_MISSED", "once"))
def beat(tick: streamq.Tick) -> None:
    ledger.line("T", tick.at_ms, time.time_ns() // 1_000_000, int(tick.triggered))
