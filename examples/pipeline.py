"""A three-stage pipeline: orders -> invoices -> emails, with an audit trail on the side.

Each stage is a plain handler that returns (or yields) ``streamq.Out`` records. The input's
key carries through, so one customer's orders, invoices and emails stay in order. With
``guarantee="exactly_once"`` a crash anywhere (between producing and committing too) neither
loses nor repeats an email.

Run it on the in-memory broker (it produces 1,000 orders, drains, and prints what came out)::

    python -m examples.pipeline
    STREAMQ_GUARANTEE=exactly_once python -m examples.pipeline

or as workers of a real broker, any number of them::

    STREAMQ_GUARANTEE=exactly_once streamq run examples.pipeline:app \\
        --broker kafka://127.0.0.1:9092 --workers 2
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator

from pydantic import BaseModel

import streamq

app = streamq.App("billing-pipeline")  # broker and guarantee: STREAMQ_BROKER, STREAMQ_GUARANTEE


class Order(BaseModel):
    id: int
    customer: str
    amount: float


class Invoice(BaseModel):
    order: int
    customer: str
    total: float


@app.handler("orders", outputs=["invoices"])
def invoice(order: Order) -> streamq.Out:
    """Stage 1: one invoice per order (VAT added); a bad order goes to orders.dlq instead."""
    if order.amount <= 0:
        raise streamq.Reject(f"order {order.id}: amount must be positive")
    return streamq.Out("invoices", Invoice(order=order.id, customer=order.customer,
                                           total=round(order.amount * 1.2, 2)))  # fmt: skip


@app.handler("invoices", group="mailer", outputs=["emails", "audit"])
def email(inv: Invoice) -> Iterator[streamq.Out]:
    """Stage 2, its own consumer group: fan-out to the customer's email and the audit log."""
    yield streamq.Out("emails", {"to": inv.customer, "subject": f"Invoice {inv.order}",
                                 "total": inv.total})  # fmt: skip
    yield streamq.Out("audit", {"invoice": inv.order}, key="audit")


def main() -> int:
    from streamq.brokers.memory import get_log, parse_url

    url = app.settings.broker
    if not url.startswith("memory:"):
        print("this demo reads the memory broker; run real brokers with `streamq run`")
        return 2
    with streamq.Producer(url) as producer:
        for i in range(1000):
            customer = f"customer-{i % 25}"
            amount = 0.0 if i == 500 else 10.0 + i % 90
            producer.send("orders", {"id": i, "customer": customer, "amount": amount},
                          key=customer)  # fmt: skip
    app.run(until_idle=0.5)
    log = get_log(parse_url(url)[0])
    counts = collections.Counter(
        {topic: sum(len(p) for p in parts) for topic, parts in log.topics.items()}
    )
    print(f"guarantee={app.settings.guarantee}: " + ", ".join(
        f"{topic} {counts[topic]}" for topic in ("orders", "invoices", "emails", "audit",
                                                 "orders.dlq")
    ))  # fmt: skip
    print(f"streamq: {app.stats.summary()}")
    ok = counts["emails"] == counts["audit"] == 999 and counts["orders.dlq"] == 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
