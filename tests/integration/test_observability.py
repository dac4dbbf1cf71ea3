"""Metrics, health, logs, tracing and ``streamq status`` against the real brokers.

Metrics are scraped over HTTP from a running ``streamq run --workers 2 --metrics-port``,
and every figure is compared with what the test made happen: which records fail once,
which always fail, which hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import streamq
from streamq.brokers import connect
from streamq.brokers.view import read_topic
from streamq.settings import load_settings

from ..conftest import free_port
from .helpers import (
    FAST_GROUP,
    Scrape,
    Worker,
    app_spec,
    get,
    streamq_cmd,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300)]

OBSERVED_APP = app_spec("observed")  # tests/apps/observed.py: failures to count, a hang


def scrape(port: int) -> Scrape | None:
    try:
        return Scrape(port)
    except OSError:
        return None


def test_metrics_of_two_workers_match_what_happened(broker, tmp_path: Path) -> None:
    """Counts per outcome and partition, both workers in one scrape, health from progress."""
    topic = broker.topic(4)
    group = unique("obs")
    port = free_port()
    env = {**os.environ, "BROKER": broker.url, "TOPIC": topic, "GROUP": group}
    worker = Worker(tmp_path, OBSERVED_APP, env, "--workers", "2", "--metrics-port", str(port))
    try:

        def both_own_partitions() -> bool:
            s = scrape(port)
            if s is None:
                return False
            owned = [v for n, _, v in s.samples if n == "streamq_assigned_partitions"]
            return sorted(owned) == [2, 2] and get(port, "/readyz")[0] == 200

        wait_until(both_own_partitions, 120, "two workers owning two partitions each")
        coords = broker.produce(topic, [(i, orjson.dumps({"i": i})) for i in range(200)])
        per_partition: dict[str, int] = defaultdict(int)
        for partition, _ in coords.values():
            per_partition[str(partition)] += 1

        wait_until(all_done_with(port, 200), 90, "200 records handled or dead-lettered")
        s = Scrape(port)
        assert s.total("streamq_records_consumed_total") == 200
        assert s.total("streamq_records_handled_total") == 192
        assert s.total("streamq_records_dead_lettered_total") == 8
        assert s.total("streamq_records_failed_total") == 8 * 2 + 8  # BAD twice, FLAKY once
        assert s.total("streamq_records_retried_total") == 8 + 8
        assert s.total("streamq_records_handled_total", handler="handle", group=group) == 192
        done = defaultdict(float)
        for name in ("streamq_records_handled_total", "streamq_records_dead_lettered_total"):
            for partition, n in s.by(name, "partition").items():
                done[partition] += n
        assert done == per_partition  # each partition's records, from both workers' files
        assert s.total("streamq_handler_duration_seconds_count") == 200
        assert s.total("streamq_end_to_end_latency_seconds_count") == 200
        assert s.total("streamq_rebalances_total", event="assigned") >= 2
        pids = {ls["pid"] for n, ls, _ in s.samples if n == "streamq_poll_timestamp_seconds"}
        assert len(pids) == 2

        def settled() -> bool:
            s = scrape(port)
            if s is None:
                return False
            lag = s.by("streamq_consumer_lag_records", "partition")
            return (
                len(lag) == 4
                and not any(lag.values())
                and s.total("streamq_in_flight_records") == 0
            )

        wait_until(settled, 30, "lag and in-flight records back to 0")
        dlq = list(read_topic(broker.url, f"{topic}.dlq", load_settings(broker=broker.url)))
        assert len(dlq) == 8

        status = subprocess.run(
            streamq_cmd("status", "--broker", broker.url, "--group", group, "--json"),
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        (report,) = orjson.loads(status.stdout)
        assert report["dlq"] == [{"topic": f"{topic}.dlq", "records": 8}]
        assert sorted(r["partition"] for r in report["partitions"]) == [0, 1, 2, 3]
        assert all(r["lag"] == 0 for r in report["partitions"])
        assert len(report["members"]) == 2
        assert len({r["owner"] for r in report["partitions"]}) == 2

        # A handler that hangs past consuming_ttl (3 s) fails liveness, then recovers.
        assert get(port, "/healthz")[0] == 200
        broker.produce(topic, [(999, orjson.dumps({"i": 999}))])
        wait_until(lambda: get(port, "/healthz")[0] == 503, 30, "/healthz to fail")
        code, body = get(port, "/healthz")
        assert code == 503 and "without progress" in " ".join(body["problems"]), body
        wait_until(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz to recover")
        wait_until(all_done_with(port, 201), 30, "the hung record to finish")
    finally:
        worker.send_signal(signal.SIGTERM)
        code, out = worker.finish(90)
    assert code == 0, out[-3000:]


def all_done_with(port: int, n: int) -> Callable[[], bool]:
    def check() -> bool:
        s = scrape(port)
        return (
            bool(s)
            and s.total("streamq_records_handled_total")
            + s.total("streamq_records_dead_lettered_total")
            == n
        )

    return check


@pytest.mark.redis
def test_broker_outage_is_logged_sparingly_and_fails_readiness(redis_server, tmp_path: Path):
    """Redis killed for 6 s: a few JSON log lines, /readyz 503, then ready again."""
    url = redis_server.url
    topic, group = unique("outage"), unique("g")
    with streamq.Producer(url) as producer:
        producer.send(topic, {"i": 0})  # always fails: one dead-letter line with coordinates
        producer.send(topic, {"i": 2})
    port = free_port()
    env = {**os.environ, "BROKER": url, "TOPIC": topic, "GROUP": group}
    worker = Worker(
        tmp_path, OBSERVED_APP, env, "--metrics-port", str(port), options=("--log-format", "json")
    )
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "the worker to be ready")
        wait_until(lambda: "dead-lettered" in worker.output(), 30, "the dead-letter line")
        before = len(worker.output().splitlines())
        redis_server.kill()
        time.sleep(6)
        code, body = get(port, "/readyz")
        during = worker.output().splitlines()[before:]
        redis_server.start()
        wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "readiness after Redis is back")
    finally:
        worker.send_signal(signal.SIGTERM)
        exit_code, out = worker.finish(90)
    assert code == 503 and any("cannot reach its broker" in p for p in body["problems"]), body
    assert 1 <= len(during) <= 12, "\n".join(during)  # 6 s of outage, not thousands of lines
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    # every line is JSON but the final summary, which is for the terminal
    assert len(lines) == len(out.splitlines()) - 1 and out.splitlines()[-1].startswith("streamq:")
    (dead,) = [x for x in lines if "dead-lettered" in x["message"]]
    assert dead["topic"] == topic and dead["handler"] == "handle" and dead["attempt"] == 2
    assert dead["partition"] >= 0 and dead["offset"] > 0 and dead["group"] == group
    assert exit_code == 0, out[-3000:]


@pytest.mark.kafka
def test_kafka_outage_is_logged_sparingly_and_fails_readiness(
    tmp_path: Path, private_kafka
) -> None:
    """A private Kafka killed under a running worker: a few log lines, /readyz 503."""
    kafka = private_kafka.nodes[0]
    url = private_kafka.url
    topic, group = unique("outage"), unique("g")
    try:
        connect(url).admin().create_topic(topic, 2)
        with streamq.Producer(url) as producer:
            producer.send(topic, {"i": 2})
        port = free_port()
        env = {**os.environ, "BROKER": url, "TOPIC": topic, "GROUP": group,
               "SHUTDOWN_TIMEOUT": "3"}  # fmt: skip
        worker = Worker(tmp_path, OBSERVED_APP, env, "--metrics-port", str(port))
        try:
            wait_until(lambda: get(port, "/readyz")[0] == 200, 90, "the worker to be ready")
            before = len(worker.output().splitlines())
            kafka.kill()
            wait_until(lambda: get(port, "/readyz")[0] == 503, 30, "/readyz to fail")
            body = get(port, "/readyz")[1]
            time.sleep(11)  # past the rate limit's 10 s window: the storm's second window too
            during = worker.output().splitlines()[before:]
            assert get(port, "/healthz")[0] == 200  # the worker itself is alive
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.finish(90)
    finally:
        kafka.kill()
    assert any("cannot reach its broker" in p for p in body["problems"]), body
    # a burst per call site, then one line per site per window: not thousands of lines
    print(f"{len(during)} lines in the outage:", *during, sep="\n")
    assert 1 <= len(during) <= 25, "\n".join(during)
    assert any("similar lines suppressed" in line for line in during), "\n".join(during)


@pytest.fixture(scope="module")
def spans():
    """A global tracer provider (OpenTelemetry allows one per process) recording in memory."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_trace_context_survives_producer_handler_dlq(broker, spans) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import StatusCode

    spans.clear()
    topic, group = broker.topic(2), unique("traced")
    extra = {"kafka": FAST_GROUP} if broker.kind == "kafka" else {}
    tracer = trace.get_tracer("test")
    with (
        tracer.start_as_current_span("checkout") as root,
        streamq.Producer(broker.url, tracing=True) as producer,
    ):
        producer.send(topic, {"i": 1}, key="a")  # always fails: retried, dead-lettered
        producer.send(topic, {"i": 2}, key="b")
    trace_id = root.get_span_context().trace_id

    app = streamq.App(group, broker=broker.url, tracing=True, revoke_timeout=3, **extra)

    @app.handler(topic, max_retries=1, retry_backoff=0.01)
    def handle(value: dict) -> None:
        if value["i"] == 1:
            raise ValueError("no")

    app.run(until_idle=1.0)
    finished = spans.get_finished_spans()
    publish = {s.context.span_id: s for s in finished if s.name == f"{topic} publish"}
    process = [s for s in finished if s.name == f"{topic} process"]
    dead = [s for s in finished if s.name == f"{topic}.dlq publish"]
    assert len(publish) == 2 and len(process) == 3 and len(dead) == 1  # 1 + 2 attempts
    for span in [*publish.values(), *process, *dead]:
        assert span.context.trace_id == trace_id
    assert all(s.parent.span_id in publish for s in process)  # child of its record's send
    failed = [s for s in process if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 2 and {s.attributes["streamq.attempt"] for s in failed} == {1, 2}
    assert dead[0].parent.span_id == failed[0].parent.span_id  # same record's context

    (record,) = list(read_topic(broker.url, f"{topic}.dlq", load_settings(broker=broker.url)))
    traceparent = dict(record.raw_headers)["traceparent"].decode()
    assert int(traceparent.split("-")[1], 16) == trace_id
