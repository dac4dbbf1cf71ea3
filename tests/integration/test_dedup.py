"""G1-G3 on both brokers with a real Redis dedup store.

G2: the same business id produced at two offsets is handled once with a ``dedup_key``, and
twice with the default coordinate key (which only suppresses redeliveries of one record).
G1 and G3: a group rewound to the start handles nothing again while its marks live, and
everything again once they expired (``dedup_ttl``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest

from .helpers import app_env, app_spec, read_ledger, start_worker, streamq_cmd, unique

pytestmark = [pytest.mark.timeout(240)]

DEDUP_APP = app_spec("dedup")  # tests/apps/dedup.py: a handler behind the dedup store


def _run(tmp_path: Path, env: dict[str, str]) -> None:
    code, out = start_worker(tmp_path, DEDUP_APP, env, "--until-idle", "2").finish(120)
    assert code == 0, out[-3000:]


def _rewind(broker, topic: str, group: str) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        streamq_cmd("offsets", "reset", "--group", group, "--topic", topic, "--to-earliest",
                    "--broker", broker.url),
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_business_keys_suppress_a_second_copy_and_marks_expire(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    # 60 orders, each produced twice (a producer retry, a replayed export): 120 records
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 60}", "order": i % 60})) for i in range(120)]
    broker.produce(topic, records)

    # G2 control: coordinate keys tell the two copies apart
    control = tmp_path / "control"
    _run(tmp_path, app_env(broker.url, topic, unique("dedup"), control, DEDUP=broker.dedup_url,
                           TTL="3600", BY="coordinates"))  # fmt: skip
    assert sorted(e.id for e in read_ledger(control)) == list(range(120))

    # G2: one handling per order, the first copy of each; G1: a rewind handles nothing again
    group, ledger = unique("dedup"), tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger, DEDUP=broker.dedup_url, TTL="3600",
                  BY="business-id")  # fmt: skip
    _run(tmp_path, env)
    first = read_ledger(ledger)
    assert sorted(e.id for e in first) == list(range(60))
    _rewind(broker, topic, group)
    _run(tmp_path, env)
    assert len(read_ledger(ledger)) == len(first), "a rewound group re-handled marked records"

    # G3: marks that expired (dedup_ttl=1) no longer suppress anything
    group, ledger = unique("dedup"), tmp_path / "expiring"
    env = {**env, "GROUP": group, "LEDGER": str(ledger), "TTL": "1"}
    _run(tmp_path, env)
    assert sorted(e.id for e in read_ledger(ledger)) == list(range(60))
    time.sleep(2)  # every mark was written before the run ended; each lives 1 s
    _rewind(broker, topic, group)
    _run(tmp_path, env)
    again = sorted(e.id for e in read_ledger(ledger))
    assert again == sorted(list(range(60)) * 2), "expired marks still suppressed records"
