"""G1-G3's app: a handler behind the dedup store ``DEDUP``, keyed by record coordinates or
(``BY=business-id``) by the order each record carries; marks live ``TTL`` seconds.

Settings: ``APP_KAFKA``.
"""

import os

import orjson

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
app = streamq.App(os.environ["GROUP"], broker=os.environ["BROKER"], poll_timeout=0.05,
                  commit_interval=0.2, lease_ttl=3, dedup_ttl=float(os.environ["TTL"]),
                  kafka=setting("kafka", {}))  # fmt: skip
BY_ID = os.environ["BY"] == "business-id"


def business_id(msg: streamq.Message) -> str:
    return str(orjson.loads(msg.value)["order"])


@app.handler(os.environ["TOPIC"], dedup=os.environ["DEDUP"],
             dedup_key=business_id if BY_ID else None)  # fmt: skip
def handle(value: dict, msg: streamq.Message) -> None:
    LEDGER.record("E", msg, value)
