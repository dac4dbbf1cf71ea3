"""``retry="later"`` on both brokers, under both guarantees (issue 19).

One partition of 20 records; the handler (tests/apps/later.py) fails every attempt of one
record (the poison) and the first attempt of another (the flaky one), and retries later
with a fixed 2 s backoff and one retry. The poison must not hold its partition: every other
record is handled before the poison's second attempt and before the flaky one's success.
Each record that can be handled is handled once; the poison ends in the DLQ after two
attempts with headers that name its retry copy and where it first came from; the group
commits the whole topic.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import streamq
from streamq.brokers.view import read_topic
from streamq.handlers import retry_topic_of
from streamq.settings import load_settings
from tests.integration.helpers import app_env, app_spec, start_worker, unique, wait_until

pytestmark = pytest.mark.timeout(120)

RECORDS, POISON, FLAKY = 20, 5, 8


def lines(path: Path) -> list[tuple[str, str, int, int]]:
    """(kind, topic, id, attempt) per ledger line, in the order written."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, _pid, topic, ident, attempt = line.split()
        out.append((kind, topic, int(ident), int(attempt)))
    return out


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_poison_record_retried_later_does_not_hold_its_partition(
    broker, tmp_path: Path, guarantee: str
) -> None:
    topic, group, delays = broker.topic(1), unique("later"), unique("delays")
    with streamq.Producer(broker.url) as producer:
        sent = [producer.send(topic, {"i": i}, key="one") for i in range(RECORDS)]
    offsets = {i: f.result().offset for i, f in enumerate(sent)}
    ledger = tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger, DELAY_TOPIC=delays, POISON=str(POISON),
                  FLAKY=str(FLAKY))  # fmt: skip
    worker = start_worker(tmp_path, app_spec("later", extra={"guarantee": guarantee}), env)
    retry_topic = retry_topic_of(topic, group)
    dlq = f"{topic}.dlq"
    settings = load_settings(broker=broker.url, broker_timeout=20)

    def dead() -> list[streamq.Message]:
        try:
            return list(read_topic(broker.url, dlq, settings))
        except streamq.StreamqError:  # not created yet
            return []

    try:
        wait_until(lambda: len(dead()) == 1 and ("E", retry_topic, FLAKY, 2) in lines(ledger),
                   90, "the poison in the DLQ and the flaky record handled")  # fmt: skip
        ends = {0: RECORDS}
        wait_until(lambda: not broker.uncommitted(topic, group, ends), 30, "the commits")
    finally:
        worker.send_signal(signal.SIGTERM)
        code, out = worker.finish(60)
    assert code == 0, out[-3000:]

    seen = lines(ledger)
    handled = [(t, i) for kind, t, i, _ in seen if kind == "E"]
    assert sorted(i for _, i in handled) == sorted(set(range(RECORDS)) - {POISON})
    failures = [(t, i, a) for kind, t, i, a in seen if kind == "F"]
    assert failures == [(topic, POISON, 1), (topic, FLAKY, 1), (retry_topic, POISON, 2)]
    # the partition went on: every other record before either retry ran
    first_retry = next(n for n, (_, t, _, _) in enumerate(seen) if t == retry_topic)
    rest = {i for kind, t, i, _ in seen[:first_retry] if kind == "E" and t == topic}
    assert rest == set(range(RECORDS)) - {POISON, FLAKY}
    assert handled[-1] == (retry_topic, FLAKY)
    # the poison's DLQ record: its last copy's coordinates, and its first delivery's
    (record,) = dead()
    headers = dict(record.raw_headers or ())
    assert headers["streamq-attempts"] == b"2"
    assert headers["streamq-original-topic"] == retry_topic.encode()
    assert headers["streamq-retry-of"] == f"{topic}:0:{offsets[POISON]}".encode()
    assert record.key == b"one" and record.value == b'{"i":' + str(POISON).encode() + b"}"
    assert "streamq-attempt" not in headers  # the working header is not left on it
