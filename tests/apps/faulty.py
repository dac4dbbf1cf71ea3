"""D3, D4, D6, D7's app: one faulty handler per case, each adding an ``F`` ledger line for
every attempt that raised, so a test reads its fault back before checking any invariant.

Settings: ``APP_KAFKA``, ``APP_EXTRA`` (more ``App`` keyword arguments), ``APP_CASE`` (which
handler: ``d3``, ``d4``, ``d6`` or ``d7``). Per run: ``TARGET`` (the record the fault is
about), ``FAULT=1`` (unset: the fixed deploy), ``HANDLER_SLEEP``. Only the chosen case is
registered, under the one name ``handle``, so a pool process that imports this module with
the same environment finds the same handler.
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

LEDGER = Ledger()
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))
TARGET = int(os.environ.get("TARGET", "-1"))  # the record the fault is about
FAULT = os.environ.get("FAULT") == "1"  # unset: the fixed deploy
CASE = setting("case")
TOPIC = os.environ["TOPIC"]

app = streamq.App(
    os.environ["GROUP"], broker=os.environ["BROKER"], kafka=setting("kafka", {}),
    revoke_timeout=3, poll_timeout=0.05, commit_interval=0.2, lease_ttl=3,
    **setting("extra", {}),
)  # fmt: skip

if CASE == "d3":

    @app.handler(TOPIC, ordering="key", max_retries=1000, retry_backoff=3,
                 retry_backoff_max=3, retry_jitter=False)  # fmt: skip
    def handle(value: dict, msg: streamq.Message) -> None:
        LEDGER.record("S", msg, value)
        if FAULT and value["i"] == TARGET:
            LEDGER.record("F", msg, value)
            raise RuntimeError(f"record {value['i']} keeps failing")
        if SLEEP:
            time.sleep(SLEEP)
        LEDGER.record("E", msg, value)

elif CASE == "d4":

    @app.handler(TOPIC, executor="processes", timeout=2, max_retries=1, retry_backoff=0.2)
    def handle(value: dict, msg: streamq.Message) -> None:
        LEDGER.record("S", msg, value)
        if value["i"] == TARGET:
            time.sleep(3600)
        if SLEEP:
            time.sleep(SLEEP)
        LEDGER.record("E", msg, value)

elif CASE == "d6":

    @app.handler(TOPIC, batch=True, max_batch=50, max_retries=2, retry_backoff=1,
                 retry_jitter=False)  # fmt: skip
    def handle(batch: list[streamq.Message]) -> None:
        now = time.monotonic_ns()  # one stamp per call: the S lines of a call share it
        values = [m.json() for m in batch]
        for m, v in zip(batch, values, strict=True):
            LEDGER.record("S", m, v, now)
        if any(v["i"] == TARGET for v in values):
            for m, v in zip(batch, values, strict=True):
                LEDGER.record("F", m, v, now)
            raise ValueError(f"a batch holding record {TARGET}")
        for m, v in zip(batch, values, strict=True):
            LEDGER.record("E", m, v)

elif CASE == "d7":

    @app.handler(TOPIC, max_retries=0, dlq_limit=3)
    def handle(value: dict, msg: streamq.Message) -> None:
        LEDGER.record("S", msg, value)
        if FAULT:
            LEDGER.record("F", msg, value)
            raise RuntimeError("bad deploy: every record fails")
        LEDGER.record("E", msg, value)

else:
    raise ValueError(f"APP_CASE={CASE!r}: no such handler fault case")
