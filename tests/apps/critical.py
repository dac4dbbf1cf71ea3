"""A8's app: the victim record raises a process-critical error (``RAISE``, or nothing if empty).

Settings: ``APP_KAFKA``, ``APP_VICTIM`` (the id of the record that raises).
"""

import asyncio
import os

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
RAISE = {"SystemExit": SystemExit(), "KeyboardInterrupt": KeyboardInterrupt(),
         "CancelledError": asyncio.CancelledError(), "MemoryError": MemoryError(),
         "": None}[os.environ["RAISE"]]  # fmt: skip
VICTIM = setting("victim")
app = streamq.App(os.environ["GROUP"], broker=os.environ["BROKER"], poll_timeout=0.05,
                  commit_interval=0.2, lease_ttl=3, kafka=setting("kafka", {}))  # fmt: skip


@app.handler(os.environ["TOPIC"], max_retries=3, retry_backoff=0.01)
def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("S", msg, value)
    if value["i"] == VICTIM and RAISE is not None:
        raise RAISE
    LEDGER.record("E", msg, value)
