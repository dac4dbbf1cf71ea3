"""``retry="later"`` on memory://: registration, the retry topic's twin, and a whole run."""

from __future__ import annotations

import uuid

import pytest

import streamq
from streamq.brokers.view import read_topic
from streamq.errors import ConfigError
from streamq.handlers import retry_topic_of
from streamq.settings import load_settings


def url() -> str:
    return f"memory://later-{uuid.uuid4().hex[:8]}"


def test_the_handler_also_reads_its_retry_topic_and_dead_letters_to_the_source_dlq() -> None:
    app = streamq.App("billing", broker=url())

    @app.handler("orders", retry="later", max_retries=2)
    def handle(value: dict) -> None: ...

    source = app.handlers[("billing", "orders")]
    twin = app.handlers[("billing", "orders.billing.retry")]
    assert source.retry_topic == twin.retry_topic == retry_topic_of("orders", "billing")
    assert source.dlq_topic == twin.dlq_topic == "orders.dlq"
    assert twin.retry.max_retries == 2 and twin.name == source.name
    app.configure(dlq_suffix=".dead")
    assert app.handlers[("billing", "orders.billing.retry")].dlq_topic == "orders.dead"


def test_in_place_is_the_default_and_bad_modes_are_refused() -> None:
    app = streamq.App("a", broker=url())

    @app.handler("t", retry="in_place")
    def fine(value: dict) -> None: ...

    assert app.handlers[("a", "t")].retry_topic is None
    assert list(app.handlers) == [("a", "t")]
    with pytest.raises(ConfigError, match=r"'in_place', 'later' or a streamq\.RetryPolicy"):
        app.handler("u", retry="soon")(fine)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch handlers retry in place"):
        app.handler("v", retry="later", batch=True)(lambda batch: None)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_poison_record_goes_around_then_to_the_dlq_while_the_rest_flows(
    guarantee: str,
) -> None:
    broker = url()
    app = streamq.App("g", broker=broker, delay_topic=f"d-{uuid.uuid4().hex[:6]}",
                      guarantee=guarantee)  # fmt: skip
    seen: list[tuple[str, int, int]] = []

    @app.handler("t", retry="later", max_retries=2, retry_backoff=0.05, retry_jitter=False)
    def handle(value: dict, msg: streamq.Message) -> None:
        seen.append((msg.topic, value["i"], msg.attempt))
        if value["i"] == 3:
            raise ValueError("poison")

    with streamq.Producer(broker) as producer:
        sent = [producer.send("t", {"i": i}, key="k") for i in range(8)]
    app.run(until_idle=1.5)
    assert [i for t, i, _ in seen if t == "t"] == list(range(8))  # the partition went on
    retries = [(t, i, a) for t, i, a in seen if t != "t"]
    assert retries == [("t.g.retry", 3, 2), ("t.g.retry", 3, 3)]
    (dead,) = read_topic(broker, "t.dlq", load_settings(broker=broker))
    headers = dict(dead.raw_headers or ())
    first = sent[3].result()
    assert headers["streamq-retry-of"] == f"t:{first.partition}:{first.offset}".encode()
    assert headers["streamq-attempts"] == b"3"
    assert headers["streamq-original-topic"] == b"t.g.retry"


def test_the_scheduled_example_runs() -> None:
    """examples/scheduled.py: a job, delayed reminders and retries later, on memory://."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "STREAMQ_BROKER"}
    result = subprocess.run([sys.executable, "-m", "examples.scheduled"], capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 reminders sent by the job, 4 delivered (2 after a retry later), early: 0" in (
        result.stdout
    )
