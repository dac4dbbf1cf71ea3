"""F5's app: a sync ``ordering="key"`` handler sleeping ``HANDLER_SLEEP`` on every record.

Settings: ``APP_KAFKA``.
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ["HANDLER_SLEEP"])

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    revoke_timeout=3,
    poll_timeout=0.05,
    commit_interval=0.2,
    lease_ttl=3,
)


@app.handler(os.environ["TOPIC"], ordering="key")
def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("S", msg, value)
    time.sleep(SLEEP)
    LEDGER.record("E", msg, value)
