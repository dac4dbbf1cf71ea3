"""No secret in any output, over TLS and authentication on real brokers.

Redis with TLS (client certificates required) and an ACL user; Apache Kafka with a SASL_SSL
listener (PLAIN). A worker runs with the password in its broker URL and its dedup store URL,
with JSON logs at debug level and a metrics port; a handler fails with the store's URL in its
exception; then the operator commands, a broker that is away, and a wrong password. Every
byte those produce (logs, CLI output, /metrics, /healthz, /readyz, DLQ headers) is searched
for the password. Each run first shows the credentials are really needed and really used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streamq.testing.kafka import KafkaCluster, SaslSsl
from tests.conftest import free_port, own_kafka, unavailable, wait_port
from tests.tls import P12_PASSWORD, Certs, make_certs

from .helpers import Worker, app_spec, read_ledger, streamq_cmd, unique, wait_until

pytestmark = [pytest.mark.timeout(300)]

# tests/apps/credentials.py, with no kafka settings of its own: every tenth record fails with
# the dedup store's URL in its exception
CREDS_APP = app_spec("credentials", kafka={})


@dataclass
class Secured:
    """A broker that wants a password, the URL that carries it, and the same without it."""

    name: str
    url: str  # with the password
    bare_url: str  # without it: for the environment and secrets-file runs
    dedup_url: str
    env: dict[str, str]  # how the password reaches a process that does not have it in a URL


def secret() -> str:
    return f"S3cret-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    try:
        return make_certs(tmp_path / "certs")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot make test certificates with openssl: {exc}")


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certs) -> Iterator[tuple[int, str]]:
    """redis-server on TLS only, client certificates required, one ACL user with a password."""
    password = secret()
    port = free_port()
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
            "--user", "default", "off", "--user", "alice", "on", f">{password}", "~*", "&*",
            "+@all", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port, 10, proc):
            unavailable("redis-server with TLS did not start (built without TLS?)")
        yield port, password
    finally:
        proc.kill()
        proc.wait(10)


def _tls_query(certs: Certs) -> str:
    return urllib.parse.urlencode(
        {"ssl_ca_certs": certs.ca, "ssl_certfile": certs.client_cert,
         "ssl_keyfile": certs.client_key}
    )  # fmt: skip


@pytest.fixture(params=["redis", "kafka"])
def secured(
    request: pytest.FixtureRequest, tmp_path: Path, certs: Certs, tls_redis
) -> Iterator[Secured]:
    port, redis_password = tls_redis
    tls = _tls_query(certs)
    dedup_url = f"rediss://alice:{redis_password}@127.0.0.1:{port}/1?{tls}"
    if request.param == "redis":
        yield Secured(
            "redis",
            f"rediss://alice:{redis_password}@127.0.0.1:{port}/0?{tls}",
            f"rediss://alice@127.0.0.1:{port}/0?{tls}",
            dedup_url,
            {"STREAMQ_REDIS_PASSWORD": redis_password},
        )
        return
    password = secret()
    listener = SaslSsl({"alice": password}, certs.server_p12, P12_PASSWORD)
    with own_kafka(1, secure=listener) as cluster:
        yield _kafka_secured(cluster, password, certs, dedup_url)


def _kafka_secured(cluster: KafkaCluster, password: str, certs: Certs, dedup_url: str) -> Secured:
    query = urllib.parse.urlencode(
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "ssl.ca.location": certs.ca}
    )
    sasl = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
            "ssl.ca.location": str(certs.ca), "sasl.username": "alice",
            "sasl.password": password}  # fmt: skip
    return Secured(
        "kafka",
        f"kafka://alice:{password}@{cluster.secure_bootstrap}?{query}",
        f"kafka://{cluster.secure_bootstrap}",
        dedup_url,
        {"STREAMQ_KAFKA": json.dumps(sasl)},
    )


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
    done = subprocess.run(
        streamq_cmd(*args), capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def http(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def the_password(s: Secured) -> str:
    return urllib.parse.urlsplit(s.url).password or ""


def test_no_secret_in_logs_errors_cli_metrics_or_dlq_headers(
    secured: Secured, tmp_path: Path
) -> None:
    password = the_password(secured)
    redis_password = urllib.parse.urlsplit(secured.dedup_url).password or ""
    outputs: dict[str, str] = {}

    # The credentials are needed: without them the broker refuses.
    code, out = cli("topics", "list", "--broker", secured.bare_url,
                    env={"STREAMQ_BROKER_TIMEOUT": "4"})  # fmt: skip
    assert code != 0, out
    outputs["no credentials"] = out
    topic = unique("creds")
    code, out = cli("topics", "create", topic, "--partitions", "2", "--broker", secured.url)
    assert code == 0, out
    outputs["topics create"] = out

    values = [orjson.dumps({"i": i}).decode() for i in range(40)]
    (tmp_path / "in.jsonl").write_text("\n".join(values) + "\n")
    code, out = cli("produce", topic, "--file", str(tmp_path / "in.jsonl"), "--broker", secured.url)
    assert code == 0, out
    outputs["produce"] = out

    group = unique("creds")
    ledger = tmp_path / "ledger"
    env = {**os.environ, "BROKER": secured.url, "TOPIC": topic, "GROUP": group,
           "LEDGER": str(ledger), "DEDUP": secured.dedup_url}  # fmt: skip
    metrics = free_port()
    worker = Worker(tmp_path, CREDS_APP, env, "--metrics-port", str(metrics),
                    options=("--log-format", "json", "--log-level", "debug"))  # fmt: skip
    dlq = f"{topic}.dlq"
    wait_until(lambda: len(read_ledger(ledger)) >= 36, 90, "the 36 good records")
    wait_until(lambda: "4 records" in cli("dlq", "list", dlq, "--broker", secured.url)[1], 60,
               "4 records on the DLQ")  # fmt: skip
    wait_until(lambda: "streamq_records_dead_lettered_total" in http(metrics, "/metrics"), 30,
               "the metrics of the dead-lettered records")  # fmt: skip
    outputs["metrics"] = http(metrics, "/metrics")
    outputs["healthz"] = http(metrics, "/healthz")
    outputs["readyz"] = http(metrics, "/readyz")
    worker.send_signal(signal.SIGTERM)
    code, outputs["worker"] = worker.finish(60)
    assert code == 0, outputs["worker"]
    assert '"level": "DEBUG"' in outputs["worker"] or '"level":"DEBUG"' in outputs["worker"]

    for name, args in {
        "status": ("status", "--group", group, "--json"),
        "lag": ("lag", "--group", group, "--topic", topic),
        "dlq list": ("dlq", "list", dlq),
        "dlq show": ("dlq", "show", dlq, "-n", "10"),
        "tail": ("tail", topic, "-n", "5"),
        "topics list": ("topics", "list"),
    }.items():
        code, outputs[name] = cli(*args, "--broker", secured.url)
        assert code == 0, (name, outputs[name])
    assert "cannot write record" in outputs["dlq show"]

    # The DLQ headers: the handler's exception named the store's URL, password and all.
    from streamq.brokers.view import read_topic
    from streamq.settings import load_settings

    dead = list(read_topic(secured.url, dlq, load_settings(broker=secured.url)))
    assert len(dead) == 4
    headers = b"".join(k.encode() + v for m in dead for k, v in m.raw_headers or [])
    assert b"cannot write record" in headers and b"alice:***@" in headers
    outputs["dlq headers"] = headers.decode(errors="replace")

    # Credentials from the environment instead of the URL work, and say nothing either.
    code, outputs["env credentials"] = cli("topics", "list", "--broker", secured.bare_url,
                                           env=secured.env)  # fmt: skip
    assert code == 0 and topic in outputs["env credentials"], outputs["env credentials"]

    # A broker that is away, and a wrong password: errors and retry lines name the URL.
    away = secured.url.replace(urllib.parse.urlsplit(secured.url).netloc.rpartition("@")[2],
                               f"127.0.0.1:{free_port()}")  # fmt: skip
    code, outputs["away"] = cli("topics", "list", "--broker", away,
                                env={"STREAMQ_BROKER_TIMEOUT": "3"})  # fmt: skip
    assert code == 1, outputs["away"]
    wrong = secured.url.replace(password, password + "-wrong")
    code, outputs["wrong password"] = cli("topics", "list", "--broker", wrong,
                                          env={"STREAMQ_BROKER_TIMEOUT": "5"})  # fmt: skip
    assert code != 0, outputs["wrong password"]
    if secured.name == "redis":
        assert code == 2 and "refused the credentials" in outputs["wrong password"]
        assert "alice:***@" in outputs["away"]

    for secret_value in (password, redis_password):
        leaked = [name for name, text in outputs.items() if secret_value in text]
        assert not leaked, f"the password appears in: {leaked}"
    assert any("***" in text for text in outputs.values())  # masked, not just absent
