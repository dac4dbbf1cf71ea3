"""The ledger app most integration and fault tests run: a handler that only keeps the ledger.

Settings: ``APP_KAFKA`` (the kafka config; the test's ``FAST_GROUP`` unless it says otherwise)
and ``APP_EXTRA`` (more ``App`` keyword arguments, which win over the defaults below).
Per run: ``HANDLER_SLEEP`` for every record, ``SLOW_ID`` sleeps ``SLOW_FOR`` more,
``KILL_ID`` SIGKILLs its worker, ``DEDUP`` names the dedup store.
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))
SLOW_ID = int(os.environ.get("SLOW_ID", "-1"))
SLOW_FOR = float(os.environ.get("SLOW_FOR", "0"))
KILL_ID = int(os.environ.get("KILL_ID", "-1"))  # this record SIGKILLs the worker

DEFAULTS = {"revoke_timeout": 3, "poll_timeout": 0.05, "commit_interval": 0.2}

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    **{**DEFAULTS, **setting("extra", {})},
)


@app.handler(os.environ["TOPIC"], dedup=os.environ.get("DEDUP") or None)
def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("S", msg, value)
    if value["i"] == KILL_ID:
        os.kill(os.getpid(), 9)
    if SLEEP:
        time.sleep(SLEEP)
    if value["i"] == SLOW_ID:
        time.sleep(SLOW_FOR)
    LEDGER.record("E", msg, value)
