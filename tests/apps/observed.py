"""The observability tests' app: known failures to count, and one record that hangs.

Ids 0, 25, 50, ... always fail (retried once, then dead-lettered); 1, 26, 51, ... fail on
their first attempt only; id 999 sleeps ``HANG_FOR`` seconds. Settings: ``APP_KAFKA``.
Per run: ``SHUTDOWN_TIMEOUT``.
"""

import os
import time

import streamq
from tests.apps import setting

BAD = set(range(0, 200, 25))  # always fail: retried once, then dead-lettered
FLAKY = set(range(1, 200, 25))  # fail on the first attempt only
HANG_ID = 999
failed_once = set()

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    revoke_timeout=3,
    poll_timeout=0.05,
    commit_interval=0.2,
    lease_ttl=3,
    consuming_ttl=3,
    shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "30")),
)


@app.handler(os.environ["TOPIC"], max_retries=1, retry_backoff=0.01)
def handle(value: dict) -> None:
    i = value["i"]
    if i in BAD:
        raise ValueError(f"bad record {i}")
    if i in FLAKY and i not in failed_once:
        failed_once.add(i)
        raise RuntimeError("flaky")
    if i == HANG_ID:
        time.sleep(float(os.environ.get("HANG_FOR", "6")))
