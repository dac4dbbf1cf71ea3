"""streamq on Apache Kafka (a private JVM node here; any cluster via STREAMQ_KAFKA_BOOTSTRAP).

Each scenario opens with the property it proves. Producers batch as users' producers do, so
end offsets and lag are checked on multi-record batches.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

import streamq
from streamq.brokers import connect

from .helpers import (
    FAST_GROUP,
    app_env,
    check_per_key_order,
    duplicates,
    end_offsets,
    kafka_committed,
    ledger_app,
    produce_keyed,
    read_ledger,
    start_worker,
    streamq_cmd,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture
def kafka_url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


def create_topic(url: str, partitions: int = 4) -> str:
    topic = unique("orders")
    connect(url).admin().create_topic(topic, partitions)
    return topic


def committed(url: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    found = kafka_committed(url.removeprefix("kafka://"), group, topic, partitions)
    return {p: (offset if offset >= 0 else None) for p, offset in found.items()}


def finish(worker, timeout: float = 120) -> tuple[int, str]:
    return worker.finish(timeout)


def test_topics_cli(kafka_url: str) -> None:
    name = unique("cli")
    made = subprocess.run(
        streamq_cmd("topics", "create", name, "--partitions", "3", "--broker", kafka_url),
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    listed = subprocess.run(
        streamq_cmd("topics", "list", "--broker", kafka_url), capture_output=True, timeout=60
    )
    assert f"{name}\t3".encode() in listed.stdout
    again = subprocess.run(
        streamq_cmd("topics", "create", name, "--partitions", "3", "--broker", kafka_url),
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 2 and b"already exists" in again.stderr


def test_scale_up_then_down_while_records_flow(kafka_url: str, tmp_path: Path) -> None:
    """Add a member, then SIGTERM the first one: nothing lost, order kept, no duplicates
    (revokes drain and commit before the partitions move)."""
    topic = create_topic(kafka_url, 4)
    produce_keyed(kafka_url, topic, 6000)
    group, ledger = unique("scale"), tmp_path / "ledger"
    spec = ledger_app()
    env = app_env(kafka_url, topic, group, ledger, HANDLER_SLEEP="0.004")
    first = start_worker(tmp_path, spec, env)
    wait_until(lambda: len(read_ledger(ledger)) > 200, 60, "the first member to start")
    second = start_worker(tmp_path, spec, env, "--until-idle", "3")
    wait_until(
        lambda: f"group {group}: assigned" in second.output(),
        90,
        "the second member to get partitions",
    )
    assert len(read_ledger(ledger)) < 6000, "the backlog was gone before the rebalance"
    first.send_signal(signal.SIGTERM)
    code1, err1 = finish(first)
    code2, err2 = finish(second, 180)
    assert code1 == 0, err1
    assert code2 == 0, err2
    entries = read_ledger(ledger)
    by_pid = Counter(e.pid for e in entries)
    assert set(by_pid) == {first.pid, second.pid} and min(by_pid.values()) > 0
    assert sorted({e.id for e in entries}) == list(range(6000)), "records lost"
    assert duplicates(entries) == []
    check_per_key_order(entries)


def test_handler_slower_than_max_poll_interval_is_not_evicted(
    kafka_url: str, tmp_path: Path
) -> None:
    """The poll thread never waits on handlers: 8 s of work with max.poll.interval.ms=6000."""
    topic = create_topic(kafka_url, 2)
    produce_keyed(kafka_url, topic, 50)
    group, ledger = unique("slow"), tmp_path / "ledger"
    spec = ledger_app(kafka={**FAST_GROUP, "max.poll.interval.ms": 6000})
    env = app_env(kafka_url, topic, group, ledger, SLOW_ID="10", SLOW_FOR="8")
    proc = start_worker(tmp_path, spec, env, "--until-idle", "2")
    code, err = finish(proc)
    assert code == 0, err
    entries = read_ledger(ledger)
    assert sorted(e.id for e in entries) == list(range(50))
    assert err.count("group " + group + ": assigned") == 1, err  # no rebalance happened
    assert "lost" not in err and "MAX_POLL" not in err


def test_slow_handler_with_large_backlog_keeps_memory_bounded(
    kafka_url: str, tmp_path: Path
) -> None:
    """Paused partitions bound memory: RSS stays far below the backlog it is sitting on."""
    topic = create_topic(kafka_url, 4)
    payload = "x" * 2000
    with streamq.Producer(kafka_url) as producer:
        for i in range(60_000):  # ~120 MB of backlog
            producer.send(topic, {"i": i, "k": f"k{i % 50}", "pad": payload}, key=f"k{i % 50}")
    group, ledger = unique("rss"), tmp_path / "ledger"
    spec = ledger_app(extra={"max_in_flight_bytes": 1 << 20, "worker_max_in_flight_bytes": 4 << 20})
    env = app_env(kafka_url, topic, group, ledger, HANDLER_SLEEP="0.0005")
    proc = start_worker(tmp_path, spec, env)
    samples = []
    try:
        wait_until(lambda: len(read_ledger(ledger)) > 100, 60, "handling to start")
        for _ in range(30):
            samples.append(_rss_mb(proc.pid))
            time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 0, err
    assert len(read_ledger(ledger)) < 60_000, "the backlog drained: nothing was paused"
    paused = int(err.rsplit("paused ", 1)[1].split(" ")[0])
    assert paused > 0, "backpressure never paused a partition"
    # generous: in-flight caps (4 MB) + librdkafka queue (1 MB here) + interpreter and clients
    assert max(samples) < 200, f"RSS grew to {max(samples):.0f} MB on a ~120 MB backlog"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_failed_delivery_is_an_error_not_silence(kafka_url: str) -> None:
    topic = create_topic(kafka_url, 2)
    with streamq.Producer(kafka_url, kafka={"message.timeout.ms": 3000}) as producer:
        future = producer.send(topic, b"x", partition=7)  # the topic has partitions 0 and 1
        with pytest.raises(streamq.BrokerError):
            future.result(30)


def test_partitions_added_while_consuming_are_picked_up(kafka_url: str, tmp_path: Path) -> None:
    """B8: partitions added to a topic under a running member are assigned and handled."""
    from confluent_kafka.admin import AdminClient, NewPartitions

    topic = create_topic(kafka_url, 2)
    group, ledger = unique("grow"), tmp_path / "ledger"
    refresh = {"topic.metadata.refresh.interval.ms": 2000}
    spec = ledger_app(kafka={**FAST_GROUP, **refresh})
    worker = start_worker(tmp_path, spec, app_env(kafka_url, topic, group, ledger))
    ends = end_offsets(produce_keyed(kafka_url, topic, 200))
    wait_until(lambda: len(read_ledger(ledger)) == 200, 60, "the first 200 records")

    admin = AdminClient({"bootstrap.servers": kafka_url.removeprefix("kafka://")})
    admin.create_partitions([NewPartitions(topic, 4)])[topic].result(30)
    with streamq.Producer(kafka_url, kafka=refresh) as producer:
        futures = [
            producer.send(topic, {"i": i, "k": f"k{i}"}, key=f"k{i}", partition=i % 4)
            for i in range(200, 400)
        ]
        assert producer.flush(60) == 0
    assert {f.result().partition for f in futures} == {0, 1, 2, 3}  # the new ones got records
    wait_until(lambda: len(read_ledger(ledger)) >= 400, 60, "records on the new partitions")
    worker.send_signal(signal.SIGTERM)
    code, err = finish(worker)
    assert code == 0, err
    entries = read_ledger(ledger)
    assert sorted(e.id for e in entries) == list(range(400))
    assert {e.partition for e in entries} == {0, 1, 2, 3}
    for f in futures:
        ends[f.result().partition] = max(ends.get(f.result().partition, 0), f.result().offset + 1)
    assert committed(kafka_url, group, topic, 4) == ends


def test_a_paused_partition_given_back_after_a_revoke_is_fetched_again(kafka_url: str) -> None:
    """C7 on librdkafka, which keeps a pause through unassign and reassign (issue 15).

    The runner forgets its back-pressure pauses with the assignment; a partition paused,
    revoked and given back to the same member was never fetched again, and the member sat
    idle next to records it owned.
    """
    from confluent_kafka import Producer as CkProducer

    from tests.contract import Member

    topic, group = create_topic(kafka_url, 2), unique("c7")
    a = Member(kafka_url, group, topic, kafka=FAST_GROUP)
    a.wait_owned(2)
    a.backend.pause(sorted(a.owned))  # back-pressure on both
    b = Member(kafka_url, group, topic, kafka=FAST_GROUP)
    deadline = time.monotonic() + 60
    while not (a.revoked and b.owned) and time.monotonic() < deadline:
        a.poll_for(0.1)
        b.poll_for(0.1)
    assert a.revoked and b.owned, "the second member never took a partition"
    moved = a.revoked[0]  # the fault: a paused partition was revoked ...
    b.close()
    deadline = time.monotonic() + 60
    while moved not in a.owned and time.monotonic() < deadline:
        a.poll_for(0.1)
    assert moved in a.owned, "the partition never came back"  # ... and given back
    producer = CkProducer({"bootstrap.servers": kafka_url.removeprefix("kafka://")})
    for i in range(20):
        producer.produce(topic, f'{{"i": {i}}}'.encode(), partition=moved.partition)
    assert producer.flush(30) == 0
    got = a.poll_until(20, timeout=30)
    assert len(got) == 20 and {m.partition for m in got} == {moved.partition}
    a.close()


def test_a_partition_nobody_fetches_is_found_resumed_and_reported(
    kafka_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever leaves a partition unfetched, its owner must not sit idle next to its records.

    The pause here is made behind the runner's back, straight on the client: the runner
    must notice the records past the fetch position, say so, resume the partition, and not
    count itself idle meanwhile.
    """
    import asyncio
    import threading

    from streamq.brokers.kafka.client import to_ck as _ck
    from streamq.runtime import flow as flow_mod
    from streamq.runtime.worker import Worker

    monkeypatch.setattr(flow_mod, "UNFETCHED_AFTER", 1.0)
    topic = create_topic(kafka_url, 1)
    app = streamq.App(unique("starved"), broker=kafka_url, kafka=FAST_GROUP, poll_timeout=0.05)
    seen: list[int] = []

    @app.handler(topic)
    def handle(value: dict) -> None:
        seen.append(value["i"])

    produce_keyed(kafka_url, topic, 10)
    worker = Worker(app, None)
    thread = threading.Thread(target=lambda: asyncio.run(worker.serve()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(seen) == 10, 60, "the first records")
        runner = worker.runners[0]
        (tp,) = runner._assigned
        backend, armed, done = runner._backend, threading.Event(), threading.Event()
        real_poll = backend.poll_batch

        def poll_batch(max_records: int, timeout: float) -> list:
            if armed.is_set():  # on the poll thread, like every pause streamq makes
                armed.clear()
                backend._consumer.pause([_ck(tp)])  # the fault, behind the runner's back
                done.set()
            return real_poll(max_records, timeout)

        backend.poll_batch = poll_batch
        armed.set()
        assert done.wait(10), "the partition was never paused"
        produce_keyed(kafka_url, topic, 10)
        wait_until(lambda: len(seen) == 20, 60, "the records past the stuck position")
        assert "not fetched for" in caplog.text and "resuming it" in caplog.text
    finally:
        worker.request_stop()
        thread.join(60)
    assert not thread.is_alive()


def test_until_idle_waits_for_a_first_fetch_that_is_slow(
    kafka_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A member that owns records it has not fetched yet is not idle, however long that takes.

    CI once saw ``--until-idle 1`` stop a member with nothing handled: its first fetch
    took longer than the idle time on a loaded machine. Here the client is paused inside
    its assignment callback, behind the runner's back, so no fetch comes at all until the
    runner finds the records waiting, says so and resumes the partitions.
    """
    import asyncio

    from streamq.brokers.kafka.consumer import KafkaConsumer
    from streamq.runtime import flow as flow_mod
    from streamq.runtime.worker import Worker

    monkeypatch.setattr(flow_mod, "UNFETCHED_AFTER", 1.0)
    paused: list[int] = []
    real_assigned = KafkaConsumer._assigned

    def assigned(self: KafkaConsumer, consumer, parts: list) -> None:
        real_assigned(self, consumer, parts)
        consumer.pause(parts)  # the fault: owned, unpaused for the runner, never fetched
        paused.append(len(parts))

    monkeypatch.setattr(KafkaConsumer, "_assigned", assigned)
    topic = create_topic(kafka_url, 2)
    produce_keyed(kafka_url, topic, 20)
    app = streamq.App(unique("slowfirst"), broker=kafka_url, kafka=FAST_GROUP, poll_timeout=0.05)
    seen: list[int] = []

    @app.handler(topic)
    def handle(value: dict) -> None:
        seen.append(value["i"])

    asyncio.run(asyncio.wait_for(Worker(app, 0.3).serve(), 120))
    assert paused, "the assignment was never paused"
    assert "not fetched for" in caplog.text, "the runner never found the records waiting"
    assert sorted(seen) == list(range(20)), f"stopped idle with {len(seen)} of 20 handled"
