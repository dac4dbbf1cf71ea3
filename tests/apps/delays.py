"""The delayed-records tests' app (issue 19): a handler on ``TOPIC`` that notes each arrival.

Producers send ``{"i": id, "due": ms}`` records with a delay; the workers of this app move
them out of the delay topic (``DELAY_TOPIC``) when due, and the handler writes ``D PID ID
DUE_MS ARRIVED_MS`` to ``LEDGER`` (one ``os.write`` per line). ``GROUP`` names the app.
Settings: ``APP_KAFKA``, ``APP_EXTRA`` (more ``App`` keywords).
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

DEFAULTS = {"lease_ttl": 3, "commit_interval": 0.2}

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    delay_topic=os.environ["DELAY_TOPIC"],
    **{**DEFAULTS, **setting("extra", {})},
)
ledger = Ledger()


@app.handler(os.environ["TOPIC"])
def arrived(value: dict) -> None:
    ledger.line("D", value["i"], value["due"], time.time_ns() // 1_000_000)
