"""Prometheus metrics and progress-based health, for ``streamq run --metrics-port``.

How the numbers get out without touching the hot path:

- The runtime already counts outcomes once per unit of work (``Stats``, keyed by group,
  topic, partition and handler) and times units into plain-Python histograms
  (``Latency``). It never calls prometheus-client itself.
- Each worker runs an ``Exporter`` thread that, once per ``interval``, turns the growth of
  those counters into prometheus-client increments and copies the poll threads' latest
  samples (in-flight records and bytes, paused and halted partitions, lag, progress) into
  gauges. Its cost is per second, not per record.
- prometheus-client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): every worker
  process writes its own files, and the HTTP server (``serve``) in the process that owns the
  port reads all of them, so ``--workers N`` is one coherent view. Counters of a worker that
  died stay (they are history); its gauges go (``mark_process_dead``).

Health is computed by the server from the same files. Liveness (``/healthz``) fails when a
worker's poll loop has not turned within ``poll_ttl``, or when a partition with work has not
advanced within ``consuming_ttl`` (a hung handler, or records it owns that are not fetched).
Readiness (``/readyz``) wants every live worker connected to its broker and every group
holding partitions.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ConfigError
from .logs import get_logger
from .stats import (
    COMMIT_BUCKETS,
    E2E_BUCKETS,
    HANDLER_BUCKETS,
    GroupSample,
    Latency,
    PartitionSample,
    RunnerView,
    Stats,
)

__all__ = [
    "E2E_BUCKETS",
    "HANDLER_BUCKETS",
    "Exporter",
    "GroupSample",
    "Latency",
    "MetricsServer",
    "PartitionSample",
    "evaluate_health",
    "prepare_multiprocess_dir",
]

log = get_logger("streamq.metrics")

PARTITION_LABELS = ("group", "topic", "partition", "handler")


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """Point prometheus-client at a multiprocess directory before anything imports it.

    Uses ``PROMETHEUS_MULTIPROC_DIR`` when set (and leaves it in place afterwards), else a
    fresh temporary directory that the caller removes. Returns (path, created).
    """
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        os.makedirs(existing, exist_ok=True)
        return existing, False
    path = tempfile.mkdtemp(prefix="streamq-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, True


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "--metrics-port needs prometheus-client: pip install 'streamq[metrics]'"
        ) from None
    return prometheus_client


def _observe_many(child: Any, deltas: list[int], total: float) -> None:
    """Add pre-bucketed observations to a prometheus-client histogram child.

    prometheus-client has no call for "n observations of this value"; its histogram keeps
    one value per bucket plus a sum, which is what this adds to. The unit tests check that
    these attributes still exist, so an upgrade that changes them fails loudly.
    """
    child._sum.inc(total)
    buckets = child._buckets
    for i, n in enumerate(deltas):
        if n:
            buckets[i].inc(n)


class Exporter:
    """One per worker process: copies the runtime's counters and samples into Prometheus."""

    COUNTERS = (
        ("consumed", "streamq_records_consumed", "Records fetched from the broker."),
        ("handled", "streamq_records_handled", "Records handled successfully."),
        ("failed", "streamq_records_failed", "Handler calls that raised (each attempt)."),
        ("retried", "streamq_records_retried", "Handler retries (attempts after the first)."),
        ("dead_lettered", "streamq_records_dead_lettered", "Records written to the DLQ."),
        ("deduplicated", "streamq_records_deduplicated", "Records skipped as already handled."),
        ("paused", "streamq_partition_pauses", "Times a partition was paused (back-pressure)."),
    )

    def __init__(self, stats: Stats, runners: Iterable[RunnerView], interval: float = 1.0):
        pc = _prometheus()
        self._stats = stats
        self._runners = list(runners)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="streamq-metrics", daemon=True)
        self._flushed: dict[tuple[str, Any], Any] = {}  # what was already added, per series
        self._known: dict[str, set[Any]] = {}  # gauge series set once, zeroed when gone
        # registry=None: in multiprocess mode the server reads the files, not a registry, and
        # a second run in the same process must not collide with the first one's metrics.
        C = functools.partial(pc.Counter, registry=None)
        G = functools.partial(pc.Gauge, registry=None)
        H = functools.partial(pc.Histogram, registry=None)
        part = PARTITION_LABELS
        tp = ("group", "topic", "partition")
        self._counters = {kind: C(name, doc, part) for kind, name, doc in self.COUNTERS}
        self._handler_time = H(
            "streamq_handler_duration_seconds",
            "Handler time per record; inline and pooled handlers are timed per slice of "
            "records, each record counted at the slice's mean.",
            part,
            buckets=HANDLER_BUCKETS,
        )
        self._e2e = H(
            "streamq_end_to_end_latency_seconds",
            "Record timestamp to handled (includes time waiting in the log).",
            part,
            buckets=E2E_BUCKETS,
        )
        self._commit_time = H(
            "streamq_commit_duration_seconds",
            "Time of one commit call (asynchronous commits: the call only).",
            ("group", "mode"),
            buckets=COMMIT_BUCKETS,
        )
        self._commit_failures = C(
            "streamq_commit_failures", "Commits the broker refused or that failed.", ("group",)
        )
        self._rebalances = C(
            "streamq_rebalances",
            "Rebalance callbacks by event: assigned, revoked, lost (Redis: lease changes).",
            ("group", "event"),
        )
        self._ownership = C(
            "streamq_partition_ownership_changes",
            "Partitions assigned, revoked or lost (Redis: leases acquired or given up).",
            ("group", "event"),
        )
        self._events = {
            "stream_reset": C(
                "streamq_stream_resets",
                "Redis: a partition's consumer group was gone (Redis restarted empty, or the "
                "key was deleted) and was recreated from the start of the stream.",
                ("group", "topic", "partition"),
            ),
            "lost_to_trim": C(
                "streamq_records_lost_to_trim",
                "Redis: pending entries trimmed from the stream before they were handled.",
                ("group", "topic", "partition"),
            ),
            "trimmed_unread": C(
                "streamq_records_trimmed_unread",
                "Redis: entries trimmed from the stream before the group ever read them.",
                ("group", "topic", "partition"),
            ),
            **{
                event: C(f"streamq_share_records_{name}", about, ("group", "topic", "partition"))
                for event, name, about in _SHARE_EVENTS
            },
        }
        self._dedup_errors = C(
            "streamq_dedup_errors",
            "Failed calls to a handler's dedup store (it is then left alone for a few "
            "seconds: records are handled, never skipped).",
            ("group", "topic", "handler", "operation"),
        )
        self._dedup_bypassed = C(
            "streamq_dedup_bypassed",
            "Records not checked against, or not marked in, a failing dedup store.",
            ("group", "topic", "handler", "operation"),
        )
        self._in_flight = G(
            "streamq_in_flight_records", "Fetched, unfinished records.", tp,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._in_flight_bytes = G(
            "streamq_in_flight_bytes", "Payload bytes of fetched, unfinished records.", tp,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._paused = G(
            "streamq_partition_paused", "1 while the partition is paused.", tp,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._halted = G(
            "streamq_partition_halted",
            "1 while the partition is halted at a record it could neither handle nor dead-letter.",
            tp,
            multiprocess_mode="livesum",
        )
        self._lag = G(
            "streamq_consumer_lag_records",
            "Records between the group's committed position and the end of the partition, "
            "as last sampled by the partition's owner.",
            tp,
            multiprocess_mode="livemostrecent",
        )
        self._waiting = G(
            "streamq_partition_waiting_since_timestamp_seconds",
            "Unix time since which the partition has had work but made no progress; 0 when "
            "it has none. Liveness fails when this is older than consuming_ttl.",
            tp,
            multiprocess_mode="liveall",
        )
        self._assigned = G(
            "streamq_assigned_partitions",
            "Partitions owned, per worker process (sum by group for the group's total).",
            ("group",),
            multiprocess_mode="liveall",
        )
        self._last_poll = G(
            "streamq_poll_timestamp_seconds",
            "Unix time of the poll loop's last turn. Liveness fails when older than poll_ttl.",
            ("group",),
            multiprocess_mode="liveall",
        )
        self._connected = G(
            "streamq_broker_connected",
            "1 while the worker's consumer reaches its broker.",
            ("group",),
            multiprocess_mode="liveall",
        )
        self._ttl = G(
            "streamq_health_ttl_seconds",
            "The poll_ttl and consuming_ttl this worker is judged by.",
            ("which",),
            multiprocess_mode="livemax",
        )

    def start(self, poll_ttl: float, consuming_ttl: float) -> None:
        self._ttl.labels("poll").set(poll_ttl)
        self._ttl.labels("consuming").set(consuming_ttl)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.flush()

    def _main(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # never let metrics take the worker down
                log.exception("exporting metrics failed")

    def flush(self) -> None:
        by_kind = self._stats.by_labels
        for kind, counter in self._counters.items():
            self._add_counts(kind, counter, by_kind[kind])
        for runner in self._runners:
            group = runner.group
            for labels, latency in list(runner.handler_latency.items()):
                self._add_latency("handler", self._handler_time, labels, latency)
            for labels, latency in list(runner.e2e_latency.items()):
                self._add_latency("e2e", self._e2e, labels, latency)
            for mode, latency in list(runner.commit_latency.items()):
                self._add_latency("commit", self._commit_time, (group, mode), latency)
            self._add_counts("commit_failures", self._commit_failures, runner.commit_failures)
            self._add_counts("rebalances", self._rebalances, runner.rebalances)
            self._add_counts("ownership", self._ownership, runner.ownership_changes)
            for spec in runner.specs.values():
                if spec.dedup is not None:
                    self._add_dedup((group, spec.topic, spec.name), spec.dedup)
            for (event, topic, partition), n in list(runner.backend_events.items()):
                metric = self._events.get(event)
                if metric is not None:
                    self._add_counts(event, metric, {(group, topic, partition): n})
            self._last_poll.labels(group).set(runner.last_poll)
            sample = runner.sample
            if sample is not None:
                self._set_sample(group, sample)

    def _add_dedup(self, key: tuple[str, str, str], store: Any) -> None:
        for name, metric, counts in (
            ("dedup_errors", self._dedup_errors, store.errors),
            ("dedup_bypassed", self._dedup_bypassed, store.bypassed),
        ):
            self._add_counts(name, metric, {(*key, op): n for op, n in list(counts.items())})

    def _add_counts(self, kind: str, metric: Any, counts: Mapping[Any, int]) -> None:
        flushed = self._flushed
        for labels, value in list(counts.items()):
            key = (kind, labels)
            delta = value - flushed.get(key, 0)
            if delta > 0:
                metric.labels(*labels).inc(delta)
                flushed[key] = value

    def _add_latency(self, kind: str, metric: Any, labels: Any, latency: Latency) -> None:
        key = (kind, labels)
        counts, total = list(latency.counts), latency.total
        before = self._flushed.get(key)
        if before is None:
            deltas, dsum = counts, total
        else:
            deltas = [a - b for a, b in zip(counts, before[0], strict=True)]
            dsum = total - before[1]
        if any(deltas):
            _observe_many(metric.labels(*labels), deltas, dsum)
            self._flushed[key] = (counts, total)

    def _set_sample(self, group: str, sample: GroupSample) -> None:
        self._connected.labels(group).set(1 if sample.connected else 0)
        self._assigned.labels(group).set(len(sample.partitions))
        known = self._known.setdefault(group, set())
        for tp, p in sample.partitions.items():
            labels = (group, tp.topic, str(tp.partition))
            self._in_flight.labels(*labels).set(p.in_flight)
            self._in_flight_bytes.labels(*labels).set(p.bytes)
            self._paused.labels(*labels).set(1 if p.paused else 0)
            self._halted.labels(*labels).set(1 if p.halted else 0)
            self._waiting.labels(*labels).set(p.waiting_since)
            if p.lag is not None:
                self._lag.labels(*labels).set(p.lag)
        for tp in known - sample.partitions.keys():  # revoked: this worker no longer counts
            labels = (group, tp.topic, str(tp.partition))
            for gauge in (self._in_flight, self._in_flight_bytes, self._paused, self._halted):
                gauge.labels(*labels).set(0)
            self._waiting.labels(*labels).set(0)
        self._known[group] = set(sample.partitions)


# Share groups' counts (the backends' events): event, metric name suffix, help
_SHARE_EVENTS = (
    ("share_accepted", "accepted",
     "Share groups: records handled and acknowledged (Kafka ACCEPT, Redis XACK)."),
    ("share_rejected", "rejected",
     "Share groups: records dead-lettered, then acknowledged as given up (Kafka REJECT)."),
    ("share_released", "released",
     "Share groups: records a stopping member handed back unfinished, for the others to "
     "take at once (Kafka RELEASE; Redis: claimable at once)."),
    ("share_redelivered", "redelivered",
     "Share groups: records delivered again (a member died, or held one past its lock or "
     "visibility timeout); their delivery counts bound the attempts."),
    ("share_ack_failed", "ack_failures",
     "Share groups: partitions whose acknowledgements the broker refused (those records "
     "come again once their locks lapse)."),
)  # fmt: skip


# -- the server side ---------------------------------------------------------------------------


@dataclass
class Health:
    healthy: bool
    problems: list[str]
    workers: int


def evaluate_health(
    families: Iterable[Any], now: float, poll_ttl: float | None = None,
    consuming_ttl: float | None = None,
) -> tuple[Health, Health]:  # fmt: skip
    """Liveness and readiness from collected metric families (all workers' files).

    The TTLs default to what the workers published (``streamq_health_ttl_seconds``).
    """
    samples: dict[str, list[Any]] = {}
    for family in families:
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    ttl = {s.labels["which"]: s.value for s in samples.get("streamq_health_ttl_seconds", [])}
    poll_ttl = poll_ttl if poll_ttl is not None else ttl.get("poll", 60.0)
    consuming_ttl = consuming_ttl if consuming_ttl is not None else ttl.get("consuming", 300.0)
    polls = samples.get("streamq_poll_timestamp_seconds", [])
    workers = len({s.labels.get("pid") for s in polls})
    live = [
        f"worker pid {s.labels.get('pid')}: group {s.labels['group']} has not polled for "
        f"{now - s.value:.0f}s (poll_ttl {poll_ttl:g}s)"
        for s in polls
        if s.value and now - s.value > poll_ttl
    ]
    live.extend(
        f"worker pid {s.labels.get('pid')}: {s.labels['topic']}[{s.labels['partition']}] of "
        f"group {s.labels['group']} has had work without progress for {now - s.value:.0f}s "
        f"(consuming_ttl {consuming_ttl:g}s): a handler hangs, or its records are not fetched"
        for s in samples.get("streamq_partition_waiting_since_timestamp_seconds", [])
        if s.value and now - s.value > consuming_ttl
    )
    ready = [] if workers else ["no worker has reported yet"]
    ready.extend(
        f"worker pid {s.labels.get('pid')}: group {s.labels['group']} cannot reach its broker"
        for s in samples.get("streamq_broker_connected", [])
        if not s.value
    )
    assigned: Counter[str] = Counter()
    for s in samples.get("streamq_assigned_partitions", []):
        assigned[s.labels["group"]] += int(s.value)
    for s in polls:
        group = s.labels["group"]
        if not assigned[group] and f"group {group} owns no partitions" not in ready:
            ready.append(f"group {group} owns no partitions")
    return Health(not live, live, workers), Health(not ready and not live, ready + live, workers)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over every worker's multiprocess files."""

    def respond_settled(self, route: str) -> tuple[int, str, bytes]:
        """``respond``, read again when a worker was creating a file right then.

        prometheus-client's reader fails on a metrics file a worker has just created and not
        yet sized ("unpack_from requires a buffer of at least 4 bytes"): a moment later it
        reads fine, so a health check must not turn that into a 500.
        """
        for _ in range(4):
            try:
                return self.respond(route)
            except struct.error:
                time.sleep(0.02)
        return self.respond(route)

    def __init__(self, host: str, port: int, path: str) -> None:
        pc = _prometheus()
        from prometheus_client import multiprocess

        self._pc = pc
        self._multiprocess = multiprocess
        self.path = path
        self.registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=path)  # type: ignore[no-untyped-call]
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = self.path.split("?", 1)[0]
                try:
                    status, ctype, body = server.respond_settled(route)
                except Exception as exc:  # a scrape must never take the worker down
                    status, ctype, body = 500, "text/plain", f"error: {exc}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would be noise

        try:
            self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from None
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="streamq-metrics-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def mark_dead(self, pid: int) -> None:
        """A worker exited: its gauges (and liveness) go; its counters stay."""
        self._multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def respond(self, route: str) -> tuple[int, str, bytes]:
        if route in ("/metrics", "/"):
            return 200, self._pc.CONTENT_TYPE_LATEST, self._pc.generate_latest(self.registry)
        if route in ("/healthz", "/readyz"):
            live, ready = evaluate_health(self.registry.collect(), time.time())
            health = live if route == "/healthz" else ready
            body = orjson.dumps(
                {
                    "status": "ok" if health.healthy else "fail",
                    "workers": health.workers,
                    "problems": health.problems,
                }
            )
            return (200 if health.healthy else 503), "application/json", body + b"\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(host: str, port: int | None) -> Iterator[MetricsServer | None]:
    """The metrics server for one run, or None when ``port`` is None.

    Call it before the app's module is imported where possible: prometheus-client picks its
    multiprocess mode when first imported, and the app's own metrics then land in the shared
    directory too.
    """
    if port is None:
        yield None
        return
    path, created = prepare_multiprocess_dir()
    try:
        server = MetricsServer(host, port, path)
        server.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, server.port)
        try:
            yield server
        finally:
            server.close()
    finally:
        if created:
            remove_dir(path)
