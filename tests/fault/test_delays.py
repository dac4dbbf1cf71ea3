"""Issue 19's proof for delayed records: each arrives once, never early, through kills.

Two workers of tests/apps/delays.py share a delay topic of two partitions. A producer sends
10,000 records spread over a few seconds, each with a random delay of up to 5 s (given as
``deliver_at``, so the test knows each due time exactly). Meanwhile the worker moving delay
partitions is SIGKILLed twice and restarted; each kill is first shown to have landed on a
member that owned delay partitions while records still waited. Then the target topic is read
whole (read_committed on Kafka): every id is in it exactly once, and none arrived before it
was due (Kafka: the record's timestamp, set when the mover produced it; Redis: the entry
ID's milliseconds, set by Redis at the XADD). The handler's ledger shows every id arrived
end to end. The lateness (arrival - due) p50/p99/max is printed for the issue's note.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

import streamq
from streamq.brokers import connect
from streamq.brokers.redis.entries import SEQ_BITS
from streamq.brokers.view import read_topic
from streamq.delays import ensure_delay_topic
from streamq.settings import load_settings
from tests.integration.helpers import Worker, app_env, app_spec, start_worker, unique, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

RECORDS = 10_000
STEADY = 1000  # sent after the kills, with delays up to 2 s
MAX_DELAY_MS = 5000
SEED = 19


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ledger_ids(path: Path) -> list[tuple[int, int, int]]:
    """(id, due, arrived) per handled record."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    return [(int(i), int(d), int(a)) for _, _, i, d, a in (line.split() for line in lines)]


def percentiles(values: list[int]) -> str:
    v = sorted(values)
    return (f"p50 {statistics.median(v):.0f} ms, p99 {v[int(len(v) * 0.99)]} ms, "
            f"max {v[-1]} ms")  # fmt: skip


def test_delayed_records_arrive_once_and_never_early_through_kills(broker, tmp_path) -> None:
    target = broker.topic(2)
    delay_topic = unique("delays")
    settings = load_settings(broker=broker.url, delay_topic=delay_topic, delay_partitions=2)
    ensure_delay_topic(connect(broker.url, settings), settings)
    ledger = tmp_path / "arrivals"
    env = app_env(broker.url, target, unique("delayed"), ledger, DELAY_TOPIC=delay_topic)
    spec = app_spec("delays")
    workers = [start_worker(tmp_path, spec, env), start_worker(tmp_path, spec, env)]
    rng = random.Random(SEED)
    due: dict[int, int] = {}
    produced = threading.Event()

    def produce(first: int = 0, n: int = RECORDS, max_delay: int = MAX_DELAY_MS) -> None:
        with streamq.Producer(broker.url, delay_topic=delay_topic) as producer:
            for start in range(first, first + n, 500):  # 500 every 0.3 s
                for i in range(start, start + 500):
                    at = now_ms() + rng.randrange(max_delay)
                    due[i] = at
                    when = datetime.fromtimestamp(at / 1000, UTC)
                    producer.send(target, {"i": i, "due": at}, key=str(i), deliver_at=when)
                producer.flush(30)
                time.sleep(0.3)
        produced.set()

    def movers(w: Worker) -> bool:
        """Whether ``w`` moves delay partitions now (it said so last)."""
        out = w.output()
        return out.rfind("this member moves") > out.rfind("this member no longer moves")

    try:
        wait_until(lambda: any(movers(w) for w in workers), 60, "a member to own the delays")
        sender = threading.Thread(target=produce, daemon=True)
        sender.start()
        kills = []
        for pause in (2.0, 3.0):
            time.sleep(pause)
            wait_until(lambda: any(movers(w) for w in workers), 60, "a member to own delays")
            i = next(i for i, w in enumerate(workers) if movers(w))
            victim = workers[i]
            waiting = len(due) - len(ledger_ids(ledger))
            victim.send_signal(signal.SIGKILL)
            assert victim.finish(30)[0] == -signal.SIGKILL
            assert waiting > 0, "the kill landed when no delayed record was waiting"
            kills.append((victim.pid, waiting))
            workers[i] = start_worker(tmp_path, spec, env)
        sender.join(120)
        assert produced.is_set() and len(due) == RECORDS
        wait_until(lambda: len({i for i, _, _ in ledger_ids(ledger)}) >= RECORDS, 120,
                   "every delayed record to arrive")  # fmt: skip
        # then 1000 more with no fault, for the lateness of a steady group
        produce(RECORDS, STEADY, 2000)
        wait_until(lambda: len({i for i, _, _ in ledger_ids(ledger)}) >= RECORDS + STEADY, 60,
                   "the steady records to arrive")  # fmt: skip
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            code, out = w.finish(60)
            assert code == 0, out[-3000:]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()

    read = load_settings(broker=broker.url, broker_timeout=20)
    arrived: dict[int, list[int]] = {}
    for msg in read_topic(broker.url, target, read):
        body = orjson.loads(msg.value)
        at = msg.offset >> SEQ_BITS if broker.kind == "redis" else msg.timestamp
        assert msg.key == str(body["i"]).encode(), f"id {body['i']} lost its key"
        arrived.setdefault(body["i"], []).append(at)
    counts = Counter({i: len(a) for i, a in arrived.items()})
    assert set(arrived) == set(due), f"lost: {sorted(set(due) - set(arrived))[:10]}"
    twice = sorted(i for i, c in counts.items() if c > 1)
    assert not twice, f"{len(twice)} delivered more than once, first {twice[:10]}"
    early = sorted((arrived[i][0] - due[i], i) for i in due if arrived[i][0] < due[i])
    assert not early, f"{len(early)} arrived before they were due, first {early[:5]}"
    handled = ledger_ids(ledger)
    assert {i for i, _, _ in handled} == set(due)
    late = {i: arrived[i][0] - due[i] for i in due}
    steady = [late[i] for i in due if i >= RECORDS]
    print(f"\n{broker.kind}: {RECORDS} delayed records, kills with {[w for _, w in kills]} "
          f"still waiting; all {len(due)} once, none early. Lateness at the topic through "
          f"the kills {percentiles([late[i] for i in due if i < RECORDS])}; steady "
          f"{percentiles(steady)}; at the handler (steady) "
          f"{percentiles([a - d for i, d, a in handled if i >= RECORDS])}")  # fmt: skip
