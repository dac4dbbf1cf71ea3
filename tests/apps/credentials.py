"""The credentials test's app: every tenth record fails with the dedup store's URL, password
and all, in its exception, so the test can show the DLQ headers mask it.

Settings: ``APP_KAFKA``. Per run: ``DEDUP``.
"""

import os

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
app = streamq.App(os.environ["GROUP"], broker=os.environ["BROKER"], poll_timeout=0.05,
                  commit_interval=0.2, revoke_timeout=3, kafka=setting("kafka", {}))  # fmt: skip


@app.handler(os.environ["TOPIC"], dedup=os.environ["DEDUP"], max_retries=1, retry_backoff=0.01)
def handle(value: dict, msg: streamq.Message) -> None:
    if value["i"] % 10 == 3:
        raise RuntimeError(f"cannot write record {value['i']} to {os.environ['DEDUP']}")
    LEDGER.line("E", msg.partition, msg.offset, "k", value["i"], 0)
