"""``streamq dlq list/show/redrive`` against the real brokers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from streamq.brokers.redis.entries import offset_to_id
from streamq.brokers.view import read_topic
from streamq.settings import load_settings

from .helpers import app_env, ledger_app, start_worker, streamq_cmd, unique

pytestmark = [pytest.mark.timeout(240)]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(streamq_cmd(*args), capture_output=True, timeout=120)


def test_list_show_and_redrive(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    good = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(20)]
    bad = [(100, b"not json"), (101, b"{broken"), (102, b"[1, 2]")]  # 2 decode, 1 schema
    coords = broker.produce(topic, good + bad)
    spec = ledger_app(extra={"lease_ttl": 3})
    env = app_env(broker.url, topic, unique("dlq"), tmp_path / "ledger")
    code, err = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(120)
    assert code == 0, err
    dlq = f"{topic}.dlq"

    listed = cli("dlq", "list", dlq, "--broker", broker.url)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout.decode()
    assert "3 records" in out and "streamq.errors.DecodeError" in out and "SchemaError" in out

    shown = cli("dlq", "show", dlq, "-n", "5", "--broker", broker.url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode().count(f"{topic}[") == 3
    assert b"attempts=1" in shown.stdout and b"b'not json'" in shown.stdout
    shown_as = offset_to_id if broker.kind == "redis" else str  # as tail and lag print them
    origins = [f"{topic}[{p}]@{shown_as(off)} " for p, off in (coords[i] for i, _ in bad)]
    assert all(o in shown.stdout.decode() for o in origins), (origins, shown.stdout.decode())
    first = cli("dlq", "show", dlq, "-n", "1", "--broker", broker.url)  # stops mid-read
    assert first.returncode == 0 and first.stdout.decode().count(f"{topic}[") == 1, first.stderr
    assert b"Exception ignored" not in first.stderr and b"Traceback" not in first.stderr

    dry = cli("dlq", "redrive", dlq, "--where", "error-type=DecodeError", "--dry-run",
              "--broker", broker.url)  # fmt: skip
    assert dry.returncode == 0 and f"would send 2 records to {topic}".encode() in dry.stdout

    fixed = unique("fixed")
    sent = cli("dlq", "redrive", dlq, "--to", fixed, "--broker", broker.url)
    assert sent.returncode == 0 and b"sent 3 records" in sent.stderr, sent.stderr
    settings = load_settings(broker=broker.url, broker_timeout=20)
    redriven = list(read_topic(broker.url, fixed, settings))
    assert sorted(m.value for m in redriven) == sorted(v for _, v in bad)  # byte-exact
    assert all(not any(k.startswith("streamq-") for k, _ in m.raw_headers or []) for m in redriven)

    wrong = cli("dlq", "redrive", dlq, "--where", "type=x", "--broker", broker.url)
    assert wrong.returncode == 2 and b"expected error-type=NAME" in wrong.stderr
