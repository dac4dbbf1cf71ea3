"""Thread and process executors on the real brokers: order kept, work parallel, failures exact.

Each test runs ``streamq run`` as a real process against Apache Kafka and Redis, with a
handler that writes start (S) and end (E) lines to a ledger, plus a T line naming the thread
it ran on. Handlers run in pool threads or pool processes, so the ledger is the only witness.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.conftest import Broker

from .helpers import (
    app_env,
    app_spec,
    check_per_key_order,
    max_overlap,
    read_ledger,
    start_worker,
    unique,
)

pytestmark = [pytest.mark.timeout(240)]

EXEC_APP = app_spec("executors")  # tests/apps/executors.py: EXECUTOR and ORDERING per run


def _setup(broker: Broker, tmp_path: Path, n: int, partitions: int) -> tuple[str, str, dict]:
    topic = broker.topic(partitions)
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(n)]
    coords = broker.produce(topic, records)
    return topic, unique("g"), coords


def _run(tmp_path: Path, env: dict) -> tuple[int, str, int]:
    worker = start_worker(tmp_path, EXEC_APP, env, "--until-idle", "2")
    code, out = worker.finish(180)
    return code, out, worker.pid


def test_threads_run_keys_in_parallel_and_each_key_in_order(broker: Broker, tmp_path: Path) -> None:
    topic, group, coords = _setup(broker, tmp_path, 400, 1)
    ledger = tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger, EXECUTOR="threads", ORDERING="key",
                  HANDLER_SLEEP="0.003")  # fmt: skip
    code, out, _ = _run(tmp_path, env)
    assert code == 0, out
    ends = read_ledger(ledger)
    assert sorted(e.id for e in ends) == list(range(400)), "each record handled exactly once"
    check_per_key_order(ends)
    threads = {e.key for e in read_ledger(ledger, "T")}
    assert all(t.startswith("streamq-h") for t in threads), threads
    # one partition, 20 keys: with partition ordering this would never exceed 1
    assert max_overlap(ledger) >= 2
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}


def test_processes_keep_partition_order_and_dead_letter_what_fails(
    broker: Broker, tmp_path: Path
) -> None:
    topic, group, coords = _setup(broker, tmp_path, 300, 2)
    ledger = tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger, EXECUTOR="processes",
                  ORDERING="partition", FAIL_ID="37")  # fmt: skip
    code, out, worker_pid = _run(tmp_path, env)
    assert code == 0, out
    ends = read_ledger(ledger)
    assert sorted(e.id for e in ends) == [i for i in range(300) if i != 37]
    for partition in {e.partition for e in ends}:
        offsets = [e.offset for e in sorted(ends, key=lambda e: e.mono_ns)
                   if e.partition == partition]  # fmt: skip
        assert offsets == sorted(offsets), f"partition {partition} out of order"
    pids = {e.pid for e in ends}
    assert worker_pid not in pids, "handlers ran in pool processes, not the worker"
    starts = Counter(e.id for e in read_ledger(ledger, "S"))
    assert starts[37] == 2  # the first attempt and max_retries=1, across the process boundary
    assert broker.dlq_origins(topic) == [coords[37]]
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}


def test_a_record_that_kills_its_pool_process_costs_only_itself(
    broker: Broker, tmp_path: Path
) -> None:
    topic, group, coords = _setup(broker, tmp_path, 200, 1)
    ledger = tmp_path / "ledger"
    env = app_env(broker.url, topic, group, ledger, EXECUTOR="processes",
                  ORDERING="partition", EXIT_ID="120")  # fmt: skip
    code, out, _ = _run(tmp_path, env)
    assert code == 0, out
    ends = read_ledger(ledger)
    assert {e.id for e in ends} == set(range(200)) - {120}
    # the killer ran once in its chunk, then alone, then once more for max_retries=1
    assert Counter(e.id for e in read_ledger(ledger, "S"))[120] == 3
    assert broker.dlq_origins(topic) == [coords[120]]
    headers = broker._dlq_headers(f"{topic}.dlq")
    assert headers[0]["streamq-error-type"].endswith(b"PoolProcessDied")
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}
