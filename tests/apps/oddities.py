"""E4, E5, E6's app: the ledger app plus a side file (``SEEN``) where the handler writes what
it saw of each record (key, headers, timestamp, size); ids that raise (``FAIL_IDS``, with an
error message ``ERROR_BYTES`` long); one id whose attempt ``HOLD_ATTEMPT`` waits for the file
``RELEASE``, so the test can look at the worker meanwhile.

Settings: ``APP_KAFKA``, ``APP_EXTRA`` (more ``App`` keyword arguments), ``APP_MAX_RETRIES``.
"""

import json
import os
import time

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SEEN = os.open(os.environ["SEEN"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
FAIL = {int(i) for i in os.environ.get("FAIL_IDS", "").split(",") if i}
ERROR_BYTES = int(os.environ.get("ERROR_BYTES", "16"))
HOLD_ID = int(os.environ.get("HOLD_ID", "-1"))
HOLD_ATTEMPT = int(os.environ.get("HOLD_ATTEMPT", "1"))
RELEASE = os.environ.get("RELEASE", "")

app = streamq.App(
    os.environ["GROUP"], broker=os.environ["BROKER"], kafka=setting("kafka", {}),
    revoke_timeout=3, poll_timeout=0.05, commit_interval=0.2, lease_ttl=3,
    **setting("extra", {}),
)  # fmt: skip


@app.handler(os.environ["TOPIC"], max_retries=setting("max_retries"), retry_backoff=0.05)
def handle(value: dict, msg: streamq.Message) -> None:
    i = value["i"]
    LEDGER.record("S", msg, value)
    error = f"record {i} is poison: " + "z" * ERROR_BYTES if i in FAIL else None
    seen = {
        "i": i, "attempt": msg.attempt, "timestamp": msg.timestamp, "size": len(msg.value),
        "key": None if msg.key is None else msg.key.hex(),
        "headers": [[name, v.hex()] for name, v in msg.raw_headers or ()],
        "error_bytes": None if error is None else len(error),
    }  # fmt: skip
    os.write(SEEN, (json.dumps(seen) + "\n").encode())
    if i == HOLD_ID and msg.attempt == HOLD_ATTEMPT:
        deadline = time.monotonic() + 120
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.05)
    if error is not None:
        raise ValueError(error)
    LEDGER.record("E", msg, value)
