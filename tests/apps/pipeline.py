"""The pipeline fault tests' app: a chain of three producing stages in one app (issue 18).

``TOPIC`` (orders) -> ``INVOICES`` -> ``EMAILS`` -> ``SENT``: each stage's handler keeps its
own ledger (``LEDGER``, ``LEDGER_INVOICES``, ``LEDGER_EMAILS``, in the format
``helpers.read_ledger`` reads, so ``check_run`` and the commit observer work on every stage)
and returns one ``Out`` to the next topic carrying the input's id and key field. The record
key is the default one, the input's, so per-key order can carry through the chain. The
guarantee comes from ``STREAMQ_GUARANTEE``; settings: ``APP_KAFKA``, ``APP_EXTRA`` (more
``App`` keywords). Per run: ``HANDLER_SLEEP`` for every order (the first stage only).
"""

import os
import time

import streamq
from tests.apps import Ledger, setting

SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))

DEFAULTS = {"revoke_timeout": 3, "poll_timeout": 0.05, "commit_interval": 0.2, "lease_ttl": 3}

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka=setting("kafka", {}),
    **{**DEFAULTS, **setting("extra", {})},
)


def stage(source: str, target: str, ledger: Ledger, sleep: float = 0.0) -> None:
    """One handler on ``source`` that passes each record on to ``target``."""

    def handle(value: dict, msg: streamq.Message) -> streamq.Out:
        ledger.record("S", msg, value)
        if sleep:
            time.sleep(sleep)
        ledger.record("E", msg, value)
        return streamq.Out(target, {"i": value["i"], "k": value["k"], "from": source})

    handle.__name__ = f"pass_{source}"
    app.handler(source)(handle)


stage(os.environ["TOPIC"], os.environ["INVOICES"], Ledger(), SLEEP)
stage(os.environ["INVOICES"], os.environ["EMAILS"], Ledger("LEDGER_INVOICES"))
stage(os.environ["EMAILS"], os.environ["SENT"], Ledger("LEDGER_EMAILS"))
