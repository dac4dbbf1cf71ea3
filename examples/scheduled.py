"""Periodic jobs, delayed records and retrying later, in one small app.

A job fires every second (once in the whole group, however many workers run) and sends a
reminder that is due two seconds later; the reminder handler calls a flaky webhook with
``retry="later"``, so a failing call goes around through the delay topic instead of holding
the partition. Run it on the in-memory broker (about ten seconds; it prints what happened)::

    python -m examples.scheduled

or as workers of a real broker, any number of them (the job still fires once a tick)::

    streamq run examples.scheduled:app --broker redis://127.0.0.1:6379/0 --workers 2
    streamq schedules list examples.scheduled:app --broker redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import sys
import time

import streamq

app = streamq.App("reminders")  # broker: STREAMQ_BROKER, or memory://default
producer: streamq.Producer | None = None
fired: list[streamq.Tick] = []
delivered: list[float] = []  # seconds late, per reminder
failed_once: set[int] = set()
REMINDERS = 4


@app.every(1.0)
def remind(tick: streamq.Tick) -> None:
    """Once per second in the whole group: a reminder, due two seconds after its tick."""
    global producer
    if len(fired) == REMINDERS:
        return  # the demo's worth: the group then idles, and the run ends
    producer = producer or streamq.Producer(app.settings.broker)
    fired.append(tick)
    due = tick.at.timestamp() + 2
    producer.send("reminders", {"n": len(fired), "due": due}, delay=2)


@app.handler("reminders", retry="later", max_retries=3, retry_backoff=0.5)
def call_webhook(reminder: dict, msg: streamq.Message) -> None:
    """Every other reminder's first call fails: it comes back later, the rest flow on."""
    if msg.attempt == 1 and reminder["n"] % 2:
        failed_once.add(reminder["n"])
        raise ConnectionError("webhook timed out")
    delivered.append(time.time() - reminder["due"])


def main() -> int:
    if not app.settings.broker.startswith("memory:"):
        print("this demo reads the memory broker; run real brokers with `streamq run`")
        return 2
    app.run(until_idle=4.0)  # stops once the reminders are all in and nothing came for 4 s
    early = [x for x in delivered if x < 0]
    print(f"{len(fired)} reminders sent by the job, {len(delivered)} delivered "
          f"({len(failed_once)} after a retry later), early: {len(early)}")  # fmt: skip
    print(f"streamq: {app.stats.summary()}")
    return 0 if len(delivered) == len(fired) == REMINDERS and not early else 1


if __name__ == "__main__":
    sys.exit(main())
