"""Issue 5's acceptance app: records that always fail, fail twice, or are fine (``mode``).

Settings: ``APP_KAFKA``, ``APP_MAX_RETRIES``. Per run: ``HANDLER_SLEEP``, ``DEDUP``.
"""

import os
import time

import pydantic

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))


class Order(pydantic.BaseModel):
    i: int
    k: str
    mode: str


app = streamq.App(
    os.environ["GROUP"], broker=os.environ["BROKER"], kafka=setting("kafka", {}),
    revoke_timeout=3, poll_timeout=0.05, commit_interval=0.2, lease_ttl=3, max_poll_records=200,
)  # fmt: skip


@app.handler(os.environ["TOPIC"], max_retries=setting("max_retries"), retry_backoff=0.001,
             retry_backoff_max=0.004, dedup=os.environ.get("DEDUP") or None)  # fmt: skip
def handle(order: Order, msg: streamq.Message) -> None:
    value = {"k": order.k, "i": order.i}
    LEDGER.record("S", msg, value)
    if order.mode == "always":
        raise RuntimeError(f"order {order.i} always fails")
    if order.mode == "twice" and msg.attempt <= 2:
        raise ConnectionError(f"order {order.i}: transient failure {msg.attempt}")
    if SLEEP:
        time.sleep(SLEEP)
    LEDGER.record("E", msg, value)
