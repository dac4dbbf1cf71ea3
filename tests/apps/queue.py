"""The queue-mode tests' app (issue 20): one async handler doing 20 ms of I/O per record.

``GROUP_TYPE`` (``share`` or ``classic``), ``ORDERING`` and ``CONCURRENCY`` choose the mode;
the handler keeps the ledger (``S`` before the I/O, ``E`` after) so a test can count how many
ran at once, and ``POISON_ID`` always raises, ``KILL_ID`` SIGKILLs its worker the first time
it runs anywhere (``KILL_MARK`` is the file that says it did); ``DLQ=0`` turns the DLQ
off. Settings: ``APP_KAFKA``,
``APP_EXTRA`` (more ``App`` keyword arguments).
"""

import asyncio
import os

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0.02"))
POISON_ID = int(os.environ.get("POISON_ID", "-1"))
KILL_ID = int(os.environ.get("KILL_ID", "-1"))
KILL_MARK = os.environ.get("KILL_MARK", "")

DEFAULTS = {"revoke_timeout": 3, "poll_timeout": 0.05, "commit_interval": 0.2}

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    **{**DEFAULTS, **setting("extra", {})},
)

options: dict = {"group_type": os.environ.get("GROUP_TYPE", "share")}
if os.environ.get("ORDERING"):
    options["ordering"] = os.environ["ORDERING"]
if os.environ.get("CONCURRENCY"):
    options["concurrency"] = int(os.environ["CONCURRENCY"])
if os.environ.get("DLQ") == "0":
    options["dlq"] = False


@app.handler(os.environ["TOPIC"], max_retries=2, retry_backoff=0.05, **options)
async def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("S", msg, value)
    if value["i"] == KILL_ID and KILL_MARK and not os.path.exists(KILL_MARK):
        with open(KILL_MARK, "w") as mark:
            mark.write(str(os.getpid()))
        os.kill(os.getpid(), 9)
    if value["i"] == POISON_ID:
        raise ValueError(f"record {POISON_ID} is poison")
    await asyncio.sleep(SLEEP)
    LEDGER.record("E", msg, value)
