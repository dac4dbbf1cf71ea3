import random

import pytest

from streamq.dlq import DLQ_HEADERS, dead_letter_record
from streamq.errors import ConfigError
from streamq.message import Message
from streamq.retry import RetryPolicy
from streamq.settings import load_settings


def test_full_jitter_delays_stay_in_bounds_and_vary() -> None:
    policy = RetryPolicy(max_retries=100, backoff=0.1, backoff_max=5.0, rng=random.Random(42))
    delays = [policy.delay(n) for n in range(1, 101)]
    for n, d in enumerate(delays, start=1):
        assert 0.0 <= d <= min(5.0, 0.1 * 2 ** (n - 1))
    assert len(set(delays)) > 90  # no lockstep


def test_no_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(max_retries=10, backoff=0.5, backoff_max=3.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow on huge retry counts


def test_policy_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(max_retries=-1, backoff=-1, backoff_max=-2)
    assert len(info.value.problems) == 3


def test_dead_letter_record_keeps_bytes_and_adds_provenance() -> None:
    msg = Message("orders", 2, 15, b"\x00key", b"\xffpayload", [("h", b"1"), ("h", b"2")], 1234)
    msg.attempt = 4
    try:
        raise ValueError("boom")
    except ValueError as exc:
        key, value, headers = dead_letter_record(
            msg, exc, group="g", handler="charge", traceback_limit=256
        )
    assert key == b"\x00key" and value == b"\xffpayload"
    assert headers[:2] == [("h", b"1"), ("h", b"2")]  # originals first, duplicates kept
    h = dict(headers[2:])
    assert set(h) == set(DLQ_HEADERS)
    assert h["streamq-original-topic"] == b"orders"
    assert h["streamq-original-partition"] == b"2"
    assert h["streamq-original-offset"] == b"15"
    assert h["streamq-attempts"] == b"4"
    assert h["streamq-error-type"] == b"builtins.ValueError"
    assert h["streamq-error-message"] == b"boom"
    assert h["streamq-consumer-group"] == b"g"
    assert len(h["streamq-traceback"]) <= 256
    assert h["streamq-traceback"].endswith(b"ValueError: boom\n")


def test_a_huge_exception_message_does_not_push_the_raise_site_out_of_the_traceback() -> None:
    def charge_card() -> None:
        raise ValueError("x" * 300_000)

    msg = Message("orders", 0, 1, None, b"{}", None, 0)
    try:
        charge_card()
    except ValueError as exc:
        _, _, headers = dead_letter_record(msg, exc, group="g", handler="h", traceback_limit=8192)
    tb = dict(headers)["streamq-traceback"]
    assert len(tb) <= 8192
    assert b"in charge_card" in tb and tb.endswith(b"...[truncated]\n")
    assert len(dict(headers)["streamq-error-message"]) <= 2048


def test_settings_from_env_and_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQ_BROKER", "memory://from-env")
    monkeypatch.setenv("STREAMQ_COMMIT_INTERVAL", "2.5")
    s = load_settings()
    assert s.broker == "memory://from-env" and s.commit_interval == 2.5
    assert load_settings(broker="memory://kw").broker == "memory://kw"


def test_settings_collect_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(poll_timeout=-1, max_in_flight=0, bogus=1)
    text = str(info.value)
    assert "poll_timeout" in text and "max_in_flight" in text and "bogus: unknown setting" in text


def test_a_retry_policy_object_is_the_flat_names_in_one_value(memory_url: str) -> None:
    """One policy shared by several handlers retries exactly like the Celery-style names."""
    import streamq
    from streamq.brokers.memory import get_log, parse_url

    policy = RetryPolicy(max_retries=2, backoff=0.0, backoff_max=0.0)
    app = streamq.App("svc", broker=memory_url, poll_timeout=0.02, commit_interval=0.05)
    attempts: list[int] = []

    @app.handler("orders", retry=policy)
    def fails(msg: Message) -> None:
        attempts.append(msg.attempt)
        raise ValueError("always")

    assert app.handlers[("svc", "orders")].retry is policy
    with streamq.Producer(memory_url) as producer:
        producer.send("orders", {"id": 1})
    app.run(until_idle=0.3)
    assert attempts == [1, 2, 3]
    dead = [rec for part in get_log(parse_url(memory_url)[0]).topics["orders.dlq"] for rec in part]
    assert len(dead) == 1


def test_a_retry_policy_and_the_flat_names_together_are_refused() -> None:
    import streamq

    app = streamq.App("svc")
    with pytest.raises(ConfigError, match="not both"):

        @app.handler("orders", retry=RetryPolicy(max_retries=5), max_retries=1)
        def both(msg: Message) -> None: ...

    refused = r"retry: must be 'in_place', 'later' or a streamq\.RetryPolicy"
    with pytest.raises(ConfigError, match=refused):

        @app.handler("orders", retry={"max_retries": 5})  # type: ignore[arg-type]
        def loose(msg: Message) -> None: ...
