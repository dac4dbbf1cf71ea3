"""``make demo``: thousands of orders, a few poison ones, through examples.billing on memory://.

Prints what was handled, what went to the DLQ (and why), and the rate.
"""

from __future__ import annotations

import logging
import random
import time

import streamq
from examples.billing import app, charged
from streamq.brokers.memory import get_log

URL = "memory://demo"
ORDERS = 20_000


def produce() -> int:
    rng = random.Random(7)
    poison = 0
    with streamq.Producer(URL) as producer:
        for i in range(ORDERS):
            customer = f"customer-{rng.randrange(500)}"
            amount = round(rng.uniform(1, 500), 2)
            if i % 4000 == 1234:
                amount = 9_999.0  # the provider declines it: retried, then dead-lettered
                poison += 1
            producer.send("orders", {"id": i, "customer": customer, "amount": amount}, key=customer)
        for bad in (
            b"{this is not json",
            b'{"id": "x", "customer": 3}',
            b'{"id": 1, "amount": -5}',
        ):
            producer.send("orders", bad, key="mystery")
            poison += 1
    return poison


def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    app.configure(broker=URL, poll_timeout=0.02)
    poison = produce()
    print(f"produced {ORDERS + 3} orders to {URL} ({poison} of them poison)")
    print(f"dispatch core: {streamq.IMPLEMENTATION}")
    start = time.perf_counter()
    app.run(until_idle=0.3)
    elapsed = time.perf_counter() - start
    handled = app.stats.handled["orders"]
    dead = app.stats.dead_lettered["orders"]
    print(
        f"handled {handled} orders for {len(charged)} customers, "
        f"{sum(charged.values()):,.2f} charged in total"
    )
    print(f"dead-lettered {dead}, retried {app.stats.retried['orders']} times")
    for part in get_log("demo").topics.get("orders.dlq", []):
        for key, _value, headers, _ts in part:
            h = dict(headers or [])
            print(
                f"  DLQ key={key!r} offset={h['streamq-original-offset'].decode()} "
                f"attempts={h['streamq-attempts'].decode()} "
                f"{h['streamq-error-type'].decode().rsplit('.', 1)[-1]}: "
                f"{h['streamq-error-message'].decode()[:70]}"
            )
    print(f"rate: {handled / elapsed:,.0f} records/s (including {0.3:.1f}s idle wait)")
    if handled + dead != ORDERS + 3 or dead != poison:
        raise SystemExit("demo: outcome does not add up")


if __name__ == "__main__":
    main()
