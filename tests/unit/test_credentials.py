"""Secrets stay out of every text streamq composes: URLs, settings, errors, logs, DLQ headers."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from streamq import App, ConfigError
from streamq.brokers import connect
from streamq.credentials import redact_mapping, redact_url, remember, scrub
from streamq.dlq import H_ERROR_MESSAGE, H_TRACEBACK, dead_letter_record
from streamq.logs import JsonFormatter, get_logger
from streamq.message import Message
from streamq.settings import load_settings

SECRET = "Hunter2-Sesame-91"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://alice:{SECRET}@db:6379/0", "redis://alice:***@db:6379/0"),
        (f"rediss://:{SECRET}@db:6380", "rediss://:***@db:6380"),
        ("redis://db:6379/2?partitions=8", "redis://db:6379/2?partitions=8"),
        (
            f"kafka://k1:9092?sasl.password={SECRET}&sasl.mechanism=PLAIN",
            "kafka://k1:9092?sasl.password=***&sasl.mechanism=PLAIN",
        ),
        ("memory://default", "memory://default"),
    ],
)
def test_a_url_is_shown_without_its_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secret_settings_keys_are_masked_and_the_rest_kept() -> None:
    options = {
        "sasl.password": "x1",
        "ssl.key.password": "x2",
        "ssl.key.pem": "x3",
        "sasl.oauthbearer.client.secret": "x4",
        "sasl.username": "alice",
        "security.protocol": "SASL_SSL",
        "ssl.key.location": "/etc/key.pem.path",
    }
    masked = redact_mapping(options)
    assert [k for k, v in masked.items() if v == "***"] == [
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
    ]


def test_scrub_finds_url_passwords_inside_any_text_and_remembered_secrets_anywhere() -> None:
    text = f"Error connecting to redis://bob:{SECRET}x@host:1 (timeout)"
    assert SECRET not in scrub(text)
    remember("Opaque-Token-7781")
    assert scrub("handler said: token Opaque-Token-7781 refused") == (
        "handler said: token *** refused"
    )


def test_settings_repr_app_repr_and_url_errors_hide_the_password() -> None:
    settings = load_settings(
        broker=f"redis://alice:{SECRET}@127.0.0.1:1/0", kafka={"sasl.password": SECRET}
    )
    assert SECRET not in repr(settings)
    app = App("creds", broker=f"redis://alice:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in repr(app)
    with pytest.raises(ConfigError, match="unknown URL scheme") as caught:
        connect(f"nosuch://u:{SECRET}@h")
    assert SECRET not in str(caught.value)


def test_redis_password_setting_is_a_secret_and_is_remembered(monkeypatch) -> None:
    monkeypatch.setenv("STREAMQ_REDIS_PASSWORD", "From-The-Env-4411")
    settings = load_settings()
    assert settings.redis_secret == "From-The-Env-4411"
    assert "From-The-Env-4411" not in repr(settings)
    assert scrub("auth From-The-Env-4411 failed") == "auth *** failed"


def test_redis_password_from_a_secrets_dir(monkeypatch, tmp_path) -> None:
    (tmp_path / "streamq_redis_password").write_text("From-A-File-5512")
    monkeypatch.setenv("STREAMQ_SECRETS_DIR", str(tmp_path))
    assert load_settings().redis_secret == "From-A-File-5512"


def test_kafka_url_userinfo_becomes_sasl_settings_only_with_a_chosen_protocol() -> None:
    from streamq.brokers.kafka import KafkaBroker

    with pytest.raises(ConfigError, match=r"security\.protocol") as caught:
        KafkaBroker(f"kafka://alice:{SECRET}@k1:9092", load_settings())
    assert SECRET not in str(caught.value)
    broker = KafkaBroker(
        f"kafka://alice:{SECRET}@k1:9092?security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN",
        load_settings(),
    )
    config = broker.client_config()
    assert config["bootstrap.servers"] == "k1:9092"
    assert (config["sasl.username"], config["sasl.password"]) == ("alice", SECRET)
    assert scrub(f"config: {config}").count(SECRET) == 0


def test_log_lines_and_their_tracebacks_are_masked_in_text_and_json() -> None:
    remember(SECRET)
    log = get_logger("streamq.test_credentials")
    log.propagate = False
    text, js = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(text)
    json_handler = logging.StreamHandler(js)
    json_handler.setFormatter(JsonFormatter())
    log.addHandler(plain)
    log.addHandler(json_handler)
    try:
        try:
            raise ConnectionError(f"cannot reach redis://u:{SECRET}@h:1")
        except ConnectionError:
            log.exception("store at %s failed", f"redis://u:{SECRET}@h:1")
    finally:
        log.removeHandler(plain)
        log.removeHandler(json_handler)
    assert "store at redis://u:***@h:1 failed" in text.getvalue()
    assert "ConnectionError" in text.getvalue()  # the traceback is kept, masked
    assert SECRET not in text.getvalue()
    line = orjson.loads(js.getvalue())
    assert "ConnectionError" in line["traceback"]
    assert SECRET not in js.getvalue()


def test_a_huge_log_line_is_cut_and_says_so() -> None:
    from streamq.credentials import LINE_LIMIT

    log = get_logger("streamq.test_credentials_cut")
    log.propagate = False
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    log.addHandler(handler)
    try:
        log.warning("handler failed: %s", "x" * 300_000)
    finally:
        log.removeHandler(handler)
    line = text.getvalue()
    assert len(line) < LINE_LIMIT + 64
    assert line.startswith("handler failed: xxx") and "characters cut]" in line


def test_dlq_headers_carry_no_secret_from_the_exception() -> None:
    remember(SECRET)
    msg = Message("orders", 0, 7, b"k", b"v", [], 0)
    try:
        raise RuntimeError(f"upstream refused password {SECRET}")
    except RuntimeError as exc:
        _, _, headers = dead_letter_record(msg, exc, group="g", handler="h", traceback_limit=8192)
    values = dict(headers)
    assert SECRET.encode() not in values[H_ERROR_MESSAGE]
    assert SECRET.encode() not in values[H_TRACEBACK]
    assert b"upstream refused password ***" in values[H_ERROR_MESSAGE]
