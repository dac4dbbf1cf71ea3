"""The executor tests' app: ``EXECUTOR`` and ``ORDERING`` per run, and a ``T`` ledger line
naming the thread each call ran on (``KIND PID 0 0 THREAD ID 0``).

Per run: ``HANDLER_SLEEP``, ``FAIL_ID`` (always raises: retried, then dead-lettered),
``EXIT_ID`` (kills the process it runs in). Settings: ``APP_KAFKA``.
"""

import os
import threading
import time

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))
FAIL_ID = int(os.environ.get("FAIL_ID", "-1"))  # always raises: retried, then dead-lettered
EXIT_ID = int(os.environ.get("EXIT_ID", "-1"))  # kills the process it runs in

app = streamq.App(
    os.environ["GROUP"], broker=os.environ["BROKER"], kafka=setting("kafka", {}),
    revoke_timeout=3, poll_timeout=0.05, commit_interval=0.2, processes=2,
)  # fmt: skip


@app.handler(
    os.environ["TOPIC"], executor=os.environ["EXECUTOR"], ordering=os.environ["ORDERING"],
    max_retries=1, retry_backoff=0.01,
)  # fmt: skip
def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("S", msg, value)
    thread = threading.current_thread().name.replace(" ", "_")
    LEDGER.line("T", 0, 0, thread, value["i"], 0)
    if value["i"] == EXIT_ID:
        os._exit(3)
    if value["i"] == FAIL_ID:
        raise ValueError(f"record {value['i']} always fails")
    if SLEEP:
        time.sleep(SLEEP)
    LEDGER.record("E", msg, value)
