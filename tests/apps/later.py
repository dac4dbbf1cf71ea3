"""The ``retry="later"`` tests' app (issue 19): one handler whose failures are retried later.

The handler on ``TOPIC`` fails every attempt of the record with id ``POISON`` and the first
attempt of ``FLAKY``; it writes ``F PID TOPIC ID ATTEMPT`` for a failed attempt and ``E PID
TOPIC ID ATTEMPT`` for a handled one to ``LEDGER``. Retries go through the delay topic
(``DELAY_TOPIC``) after a fixed 2 s backoff, one retry each: long enough that the rest of the
partition is handled first, which is the point. ``GROUP`` names the app; settings:
``APP_KAFKA``, ``APP_EXTRA`` (more ``App`` keywords, the guarantee among them).
"""

import os

import streamq
from tests.apps import Ledger, setting

POISON = int(os.environ["POISON"])
FLAKY = int(os.environ["FLAKY"])

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    delay_topic=os.environ["DELAY_TOPIC"],
    **{"lease_ttl": 3, "commit_interval": 0.2, **setting("extra", {})},
)
ledger = Ledger()


@app.handler(os.environ["TOPIC"], retry="later", max_retries=1, retry_backoff=2.0,
             retry_jitter=False)  # fmt: skip
def handle(value: dict, msg: streamq.Message) -> None:
    attempt = msg.attempt
    if value["i"] == POISON or (value["i"] == FLAKY and attempt == 1):
        ledger.line("F", msg.topic, value["i"], attempt)
        raise ValueError(f"record {value['i']} fails attempt {attempt}")
    ledger.line("E", msg.topic, value["i"], attempt)
