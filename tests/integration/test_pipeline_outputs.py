"""At least once, on a real redis-server: an output the broker refuses holds its input.

The output stream's key is made a string, so every XADD to it fails (WRONGTYPE). The input
must not be committed (its entries stay pending), its partition must stop fetching instead of
piling up handled records that a restart hands out again, and once the key is fixed every
output is delivered and every input acknowledged.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

import streamq
from streamq import Out

pytestmark = pytest.mark.timeout(120)

RECORDS = 2000  # at 1 ms each: seconds of work, of which the pause leaves most undone


def test_a_refused_output_holds_its_input_and_pauses_the_partition(redis_server) -> None:
    r = redis.Redis.from_url(redis_server.url)
    app = streamq.App(
        "stage", broker=redis_server.url, poll_timeout=0.05, commit_interval=0.1,
        max_poll_records=20, max_in_flight=50,  # fetched ahead: 50 at most, so a pause shows
    )  # fmt: skip
    calls: list[int] = []

    @app.handler("orders", outputs=["out"])
    def stage(v: dict) -> Out:
        calls.append(v["id"])
        time.sleep(0.001)
        return Out("out", {"id": v["id"]})

    admin = streamq.brokers.connect(redis_server.url).admin()
    admin.create_topic("orders", 1)
    admin.create_topic("out", 1)
    r.set("out:0", "not a stream")  # every XADD to the output's stream now fails
    with streamq.Producer(redis_server.url) as producer:
        for i in range(RECORDS):
            producer.send("orders", {"id": i})

    worker = threading.Thread(target=app.run, kwargs={"until_idle": 1.0}, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # many commit attempts: each sends the refused outputs again
    stalled = len(calls)
    time.sleep(1.0)
    assert r.type("out:0") == b"string"  # the fault is still there
    pending = r.xpending("orders:0", "stage")["pending"]
    print(f"\nhandled {len(calls)} of {RECORDS} while refused; {pending} pending")
    assert calls and len(calls) == stalled < RECORDS  # paused: no new records fetched
    assert pending == len(set(calls))  # handled, but not one acknowledged
    assert worker.is_alive()  # not idle: its outputs are not delivered

    r.delete("out:0")
    worker.join(60)
    assert not worker.is_alive()
    delivered = [int(f[b"v"].split(b":")[1].rstrip(b"}")) for _, f in r.xrange("out:0")]
    assert set(delivered) == set(range(RECORDS))  # at least once: each output, maybe twice
    assert r.xpending("orders:0", "stage")["pending"] == 0
    assert sorted(set(calls)) == list(range(RECORDS))
