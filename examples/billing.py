"""A small billing app: the README's example, and what ``make demo`` runs.

Run it against any broker:  streamq run examples.billing:app --broker kafka://127.0.0.1:9092
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import streamq

app = streamq.App("billing")  # broker: STREAMQ_BROKER, --broker, or memory://default


class Order(BaseModel):
    id: int
    customer: str
    amount: float = Field(gt=0)


charged: dict[str, float] = {}


@app.handler("orders", max_retries=3, retry_backoff=0.01, dlq=True)
def charge(order: Order, msg: streamq.Message) -> None:
    """Charge one order; an amount that the payment provider rejects is retried, then DLQ'd."""
    if order.amount > 9_000:
        raise ValueError(f"payment provider declined order {order.id}: amount too large")
    charged[order.customer] = charged.get(order.customer, 0.0) + order.amount
