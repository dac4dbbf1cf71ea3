"""Logs, the metrics exporter and health evaluation, without a broker.

The scraped, end-to-end behaviour is in ``tests/integration/test_observability.py``; these
pin down the pieces: rate limiting, the JSON format, histogram bucketing, delta export and
the health rules.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import Histogram
from prometheus_client.samples import Sample

from streamq import logs
from streamq.dedup import GuardedStore
from streamq.message import Message, TopicPartition
from streamq.metrics import (
    HANDLER_BUCKETS,
    Exporter,
    GroupSample,
    Latency,
    PartitionSample,
    _observe_many,
    evaluate_health,
)
from streamq.stats import Stats


def _logger(name: str, limit: logs.RateLimit) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers[:] = [logging.StreamHandler(out)]
    logger.propagate = False
    logger.filters[:] = [limit]
    logger.setLevel(logging.INFO)
    return logger, out


def test_rate_limit_per_call_site_and_never_for_records() -> None:
    limit = logs.RateLimit(burst=3, window=0.2)
    logger, out = _logger("streamq.test.limit", limit)
    for _ in range(50):
        logger.warning("broker down: %s", "refused")
        logger.warning("another site")
    msg = Message("t", 1, 7, None, b"{}")
    for _ in range(20):
        logger.warning("dead-lettered", extra=logs.about("h", msg))
    lines = out.getvalue().splitlines()
    assert lines.count("broker down: refused") == 3 and lines.count("another site") == 3
    assert lines.count("dead-lettered") == 20
    time.sleep(0.25)
    for _ in range(10):  # the storm goes on: one line this window, with the count
        logger.warning("broker down: %s", "refused")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "broker down: refused (47 similar lines suppressed)"
    assert lines.count("broker down: refused") == 3  # no second burst
    time.sleep(0.25)
    logger.warning("broker down: %s", "refused")  # ... and the next says what it dropped
    assert out.getvalue().splitlines()[-1] == "broker down: refused (9 similar lines suppressed)"
    time.sleep(0.45)  # a whole window without a line: the storm is over, a new one bursts
    for _ in range(5):
        logger.warning("broker down: %s", "refused")
    lines = out.getvalue().splitlines()
    assert lines[-4:] == ["broker down: refused (9 similar lines suppressed)"] + [lines[-1]] * 3
    assert lines[-1] == "broker down: refused"


def test_json_lines_carry_record_coordinates() -> None:
    formatter = logs.JsonFormatter(worker=3)
    msg = Message("orders", 2, 41, None, b"{}")
    msg.attempt = 2
    record = logging.LogRecord("streamq.worker", logging.WARNING, __file__, 1, "failed %s", ("x",),
                               None)  # fmt: skip
    record.__dict__.update(logs.about("handle", msg, "billing"))
    line = orjson.loads(formatter.format(record))
    assert line["message"] == "failed x" and line["level"] == "WARNING" and line["worker"] == 3
    assert (line["topic"], line["partition"], line["offset"]) == ("orders", 2, 41)
    assert (line["handler"], line["attempt"], line["group"]) == ("handle", 2, "billing")
    try:
        raise KeyError("boom")
    except KeyError:
        import sys

        record.exc_info = sys.exc_info()
    line = orjson.loads(formatter.format(record))
    assert line["error_type"] == "KeyError" and "boom" in line["traceback"]


def test_configure_refuses_unknown_formats() -> None:
    with pytest.raises(ValueError, match="text or json"):
        logs.configure("INFO", "xml")


def test_latency_buckets_are_prometheus_le_buckets() -> None:
    latency = Latency((0.1, 1.0))
    latency.add(0.1)  # on a bound: counted in that bucket (le="0.1")
    latency.add(0.5, 3)
    latency.add(5.0)
    assert latency.counts == [1, 3, 1] and latency.total == pytest.approx(6.6)


def test_observe_many_adds_to_a_prometheus_histogram() -> None:
    h = Histogram("streamq_test_seconds", "test", ["x"], buckets=HANDLER_BUCKETS, registry=None)
    latency = Latency(HANDLER_BUCKETS)
    for value, n in ((0.0002, 10), (0.03, 5), (100.0, 1)):
        latency.add(value, n)
    _observe_many(h.labels("a"), latency.counts, latency.total)
    samples = {(s.name, s.labels.get("le")): s.value for s in h.collect()[0].samples}
    assert samples[("streamq_test_seconds_count", None)] == 16
    assert samples[("streamq_test_seconds_bucket", "0.00025")] == 10
    assert samples[("streamq_test_seconds_bucket", "0.05")] == 15
    assert samples[("streamq_test_seconds_bucket", "+Inf")] == 16
    assert samples[("streamq_test_seconds_sum", None)] == pytest.approx(100.0 + 0.002 + 0.15)


def _runner(group: str) -> SimpleNamespace:
    return SimpleNamespace(
        group=group, handler_latency={}, e2e_latency={}, commit_latency={},
        commit_failures=Counter(), rebalances=Counter(), ownership_changes=Counter(),
        last_poll=0.0, sample=None, specs={}, backend_events=Counter(),
    )  # fmt: skip


def _value(metric, name: str, **labels: str) -> float:
    return sum(
        s.value for fam in metric.collect() for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )  # fmt: skip


def test_exporter_adds_only_what_grew_and_zeroes_revoked_partitions() -> None:
    stats = Stats()
    runner = _runner("g")
    exporter = Exporter(stats, [runner])
    labels = ("g", "orders", "0", "handle")
    stats.handled_by[labels] += 10
    stats.dead_lettered_by[labels] += 1
    runner.handler_latency[labels] = lat = Latency(HANDLER_BUCKETS)
    lat.add(0.001, 10)
    runner.rebalances[("g", "assigned")] += 1
    tp = TopicPartition("orders", 0)
    runner.sample = GroupSample(
        time.time(), True, {tp: PartitionSample(5, 500, True, False, 1.0, 7)}
    )
    exporter.flush()
    exporter.flush()  # nothing grew: nothing is added twice
    handled = exporter._counters["handled"]
    assert _value(handled, "streamq_records_handled_total", partition="0") == 10
    stats.handled_by[labels] += 5
    lat.add(0.002, 5)
    exporter.flush()
    assert _value(handled, "streamq_records_handled_total") == 15
    assert _value(exporter._handler_time, "streamq_handler_duration_seconds_count") == 15
    assert _value(exporter._in_flight, "streamq_in_flight_records", partition="0") == 5
    assert _value(exporter._paused, "streamq_partition_paused", partition="0") == 1
    assert _value(exporter._lag, "streamq_consumer_lag_records", partition="0") == 7
    runner.sample = GroupSample(time.time(), True, {})  # revoked
    exporter.flush()
    assert _value(exporter._in_flight, "streamq_in_flight_records", partition="0") == 0
    assert _value(exporter._paused, "streamq_partition_paused", partition="0") == 0


def test_dedup_store_failures_and_backend_events_are_exported() -> None:
    class Broken:
        def seen(self, keys):
            raise ConnectionError("dedup redis is away")

        def mark(self, keys):
            raise ConnectionError("dedup redis is away")

    store = GuardedStore(Broken(), "redis://dedup", pause=60)
    assert store.seen(["a", "b"]) == [False, False]  # failing: handle, never skip
    store.seen(["c"])  # left alone meanwhile
    store.mark(["a", "b", "c"])
    assert store.errors == {"check": 1} and store.bypassed == {"check": 3, "mark": 3}
    runner = _runner("g")
    runner.specs = {"orders": SimpleNamespace(topic="orders", name="handle", dedup=store)}
    runner.backend_events[("stream_reset", "orders", "2")] += 1
    exporter = Exporter(Stats(), [runner])
    exporter.flush()
    exporter.flush()
    assert _value(exporter._dedup_errors, "streamq_dedup_errors_total", operation="check") == 1
    assert _value(exporter._dedup_bypassed, "streamq_dedup_bypassed_total") == 6
    resets = exporter._events["stream_reset"]
    assert _value(resets, "streamq_stream_resets_total", partition="2", group="g") == 1


def _families(*samples: tuple[str, dict[str, str], float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(samples=[Sample(n, ls, v) for n, ls, v in samples])]


def test_health_follows_polls_and_progress() -> None:
    now = 1000.0
    ttl = [("streamq_health_ttl_seconds", {"which": "poll"}, 10.0),
           ("streamq_health_ttl_seconds", {"which": "consuming"}, 30.0)]  # fmt: skip
    poll = ("streamq_poll_timestamp_seconds", {"group": "g", "pid": "1"}, now - 1)
    up = ("streamq_broker_connected", {"group": "g", "pid": "1"}, 1.0)
    owned = ("streamq_assigned_partitions", {"group": "g", "pid": "1"}, 2.0)
    waiting = {"group": "g", "topic": "t", "partition": "1", "pid": "1"}

    live, ready = evaluate_health(_families(*ttl, poll, up, owned), now)
    assert live.healthy and ready.healthy and live.workers == 1

    stale = ("streamq_poll_timestamp_seconds", {"group": "g", "pid": "1"}, now - 11)
    live, _ = evaluate_health(_families(*ttl, stale, up, owned), now)
    assert not live.healthy and "has not polled for 11s" in live.problems[0]

    hung = ("streamq_partition_waiting_since_timestamp_seconds", waiting, now - 31)
    live, ready = evaluate_health(_families(*ttl, poll, up, owned, hung), now)
    assert not live.healthy and "t[1]" in live.problems[0] and not ready.healthy
    busy = ("streamq_partition_waiting_since_timestamp_seconds", waiting, now - 29)
    idle = ("streamq_partition_waiting_since_timestamp_seconds", waiting, 0.0)
    assert evaluate_health(_families(*ttl, poll, up, owned, busy), now)[0].healthy
    assert evaluate_health(_families(*ttl, poll, up, owned, idle), now)[0].healthy

    down = ("streamq_broker_connected", {"group": "g", "pid": "1"}, 0.0)
    live, ready = evaluate_health(_families(*ttl, poll, down, owned), now)
    assert live.healthy and not ready.healthy and "cannot reach" in ready.problems[0]
    none = ("streamq_assigned_partitions", {"group": "g", "pid": "1"}, 0.0)
    _, ready = evaluate_health(_families(*ttl, poll, up, none), now)
    assert ready.problems == ["group g owns no partitions"]
    live, ready = evaluate_health([], now)
    assert live.healthy and ready.problems == ["no worker has reported yet"]


def test_stats_views_by_topic() -> None:
    stats = Stats()
    stats.handled_by[("g", "a", "0", "h")] += 3
    stats.handled_by[("g", "a", "1", "h")] += 4
    stats.handled_by[("g2", "b", "0", "h2")] += 1
    stats.dead_lettered_by[("g", "a", "1", "h")] += 2
    assert stats.handled == {"a": 7, "b": 1} and stats.dead_lettered["a"] == 2
    assert stats.summary().startswith("handled 8, dead-lettered 2")
    assert stats.snapshot()["handled"] == {"a": 7, "b": 1}
