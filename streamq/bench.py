"""``streamq bench``: drain one pre-filled topic with the raw client loop and with streamq.

Both consumers do the same work per record (the ``--handler``) on the same records, in the
same run, alternating raw then streamq for ``--rounds`` rounds, each in a fresh consumer
group. The report is the ratio, so a noisy shared machine moves both sides together.

How one drain is measured, the same way for both sides:

- Every record ticks a counter in shared memory (one slot per worker process). A monitor
  samples the slots every few milliseconds: the drain starts when the first record is
  handled and ends when all ``--messages`` are. That costs the handler one store per
  record, identical for both sides, and keeps clocks and ``/proc`` reads off the hot path.
- CPU seconds per million records: user plus system time of every worker process (from
  ``/proc``), across the drain window; this includes librdkafka's and redis-py's threads.
- RSS: each worker's resident size when its first record arrives, and its peak (VmHWM).
- End-to-end latency: after the backlog is drained, ``--latency-messages`` records are
  produced at ``--latency-rate`` per second while the consumer runs, and each is timed from
  its broker timestamp to its handler (millisecond resolution, the timestamps' own).

Kafka and Redis drains run in a fresh subprocess each (``python -m streamq.bench``), so a
drain's memory and CPU are its own. ``memory://`` lives in one process, so its drains run
in this one, one after the other.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import shared_memory
from typing import Any

import orjson
from pydantic import BaseModel

from ._native import IMPLEMENTATION
from .errors import ConfigError
from .message import Message

__all__ = ["BenchRecord", "BenchSpec", "parse_handler", "run_bench"]

HANDLERS = ("noop", "json", "pydantic", "cpu")
EXECUTORS = ("inline", "asyncio", "threads", "processes")
# Shared-memory layout: a header, then one slot per worker process.
_PHASE, _HEADER = 0, 8
_COUNT, _PID, _LAT_N, _FIRST, _CPU0, _LAT0 = 0, 1, 2, 3, 4, 8
_LAT_CAP = 4096
_SLOT = _LAT0 + _LAT_CAP
_CPU_ITERS = 2_000  # the "cpu" handler: about 50 us of pure-Python arithmetic here


class BenchRecord(BaseModel):
    """The payload every record carries; ``pad`` brings it to ``--size`` bytes."""

    id: int
    customer: str
    amount: float
    pad: str


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark: what to fill, how to drain, and how often."""

    broker: str = "memory://bench"
    messages: int = 100_000
    size: int = 100
    partitions: int = 4
    keys: int = 1000
    handler: str = "json"
    executor: str = "inline"
    ordering: str = "partition"
    workers: int = 1
    dedup: str = "none"
    metrics: bool = False  # streamq side: Prometheus metrics on, server on a free port
    rounds: int = 2
    max_seconds: float | None = None
    latency_messages: int = 2000
    latency_rate: float = 2000.0
    max_poll_records: int = 2000
    raw: bool = True
    topic: str = ""
    latency_topic: str = ""  # fresh per drain, so no drain times another's records
    shm: str = ""
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        """Counter slots: one per worker, plus one per pool process under ``processes``."""
        pool = (os.cpu_count() or 1) if self.executor == "processes" else 0
        return self.workers * (1 + pool)

    @property
    def topics(self) -> list[str]:
        return [self.topic, self.latency_topic] if self.latency_topic else [self.topic]

    def validate(self) -> None:
        problems = []
        if not self.broker.startswith(("memory://", "kafka://", "redis://", "rediss://")):
            problems.append(
                f"--broker: {self.broker!r} is not a memory://, kafka:// or redis:// URL"
            )
        problems.extend(
            f"--{name}: must be >= 1"
            for name in ("messages", "size", "partitions", "keys", "workers", "rounds")
            if getattr(self, name) < 1
        )
        try:
            parse_handler(self.handler)
        except ValueError as exc:
            problems.append(f"--handler: {exc}")
        if self.executor not in EXECUTORS:
            problems.append(f"--executor: one of {', '.join(EXECUTORS)}")
        if self.ordering not in ("partition", "key"):
            problems.append("--ordering: partition or key")
        if self.workers > 1 and self.broker.startswith("memory://"):
            problems.append("--workers: memory:// lives in one process; use Kafka or Redis")
        if not (self.dedup in ("none", "memory") or self.dedup.startswith("redis://")):
            problems.append("--dedup: none, memory or a redis:// URL")
        if problems:
            raise ConfigError(problems)


def parse_handler(text: str) -> tuple[str, float]:
    """``noop|json|pydantic|cpu|sleep:MS`` as (kind, sleep seconds)."""
    if text in HANDLERS:
        return text, 0.0
    if text.startswith("sleep:"):
        try:
            ms = float(text[6:])
        except ValueError:
            raise ValueError(f"{text!r}: sleep takes milliseconds, e.g. sleep:5") from None
        if ms < 0:
            raise ValueError(f"{text!r}: milliseconds must be >= 0")
        return "sleep", ms / 1000.0
    raise ValueError(f"{text!r} is not one of {', '.join(HANDLERS)}, sleep:MS")


def payload(i: int, size: int) -> bytes:
    base = {"id": i, "customer": f"customer-{i % 1000:04d}", "amount": 12.5, "pad": ""}
    pad = max(0, size - len(orjson.dumps(base)))
    base["pad"] = "x" * pad
    return orjson.dumps(base)


# -- the per-record work, shared by both sides --------------------------------------------------


def _burn() -> int:
    total = 0
    for i in range(_CPU_ITERS):
        total += i * i
    return total


def work_fn(kind: str, sleep_s: float) -> Callable[[Any], Any]:
    """The raw loop's per-record work, matching what the streamq handler does."""
    loads = orjson.loads
    if kind == "noop":
        return lambda v: None
    if kind == "json":
        return loads
    if kind == "pydantic":
        return BenchRecord.model_validate_json
    if kind == "cpu":
        return lambda v: (loads(v), _burn())
    return lambda v: time.sleep(sleep_s)


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open the parent's block without adopting it.

    Before Python 3.13 the resource tracker of an attaching process unlinks the block when
    that process exits (cpython #82300), under the parent's feet.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name)
    finally:
        resource_tracker.register = register


def _view(shm: shared_memory.SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None
    return buf.cast("q")


class Tally:
    """This process's slot in the shared counters; ``tick`` runs once per record."""

    def __init__(self, shm_name: str, slot: int | None, first_free: int = 0) -> None:
        self._shm = _attach(shm_name)
        self.view = _view(self._shm)
        if slot is None:  # a pool process: claim a free slot past the workers'
            slot = self._claim(shm_name, first_free)
        self.base = _HEADER + slot * _SLOT
        self.view[self.base + _PID] = os.getpid()
        atexit.register(self.close)  # the view must go before the mapping can close

    def _claim(self, shm_name: str, first: int) -> int:
        import fcntl
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f"{shm_name.strip('/')}.lock")
        with open(path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            slots = (len(self.view) - _HEADER) // _SLOT
            for slot in range(first, slots):
                if self.view[_HEADER + slot * _SLOT + _PID] == 0:
                    self.view[_HEADER + slot * _SLOT + _PID] = os.getpid()
                    return slot
        raise RuntimeError("no free counter slot for this pool process")

    def tick_fn(self) -> Callable[[int], None]:
        """A closure: a local increment and one shared store per record; latency in phase 2."""
        view, base = self.view, self.base
        at_count, at_n, at_lat = base + _COUNT, base + _LAT_N, base + _LAT0
        at_first = base + _FIRST
        count = 0

        def tick(timestamp_ms: int) -> None:
            nonlocal count
            count += 1
            if count == 1:  # before the count, so the monitor never sees one without it
                view[at_first] = time.monotonic_ns()
                view[at_first + 1] = time.process_time_ns()
            view[at_count] = count
            if view[_PHASE]:
                n = view[at_n]
                if n < _LAT_CAP:
                    view[at_lat + n] = time.time_ns() // 1_000_000 - timestamp_ms
                    view[at_n] = n + 1

        return tick

    def close(self) -> None:
        self.view.release()
        self._shm.close()
        atexit.unregister(self.close)


# -- raw client loops ------------------------------------------------------------------------


def raw_drain(spec: BenchSpec, slot: int, stop: threading.Event) -> None:
    """The client library's own loop: fetch, the handler's work, commit once per batch."""
    kind, sleep_s = parse_handler(spec.handler)
    work = work_fn(kind, sleep_s)
    tally = Tally(spec.shm, slot)
    tick = tally.tick_fn()
    try:
        if spec.broker.startswith("kafka://"):
            _raw_kafka(spec, work, tick, stop)
        elif spec.broker.startswith(("redis://", "rediss://")):
            _raw_redis(spec, work, tick, stop)
        else:
            _raw_memory(spec, work, tick, stop)
    finally:
        tally.close()


def _raw_kafka(spec: BenchSpec, work: Any, tick: Any, stop: threading.Event) -> None:
    from confluent_kafka import Consumer

    from .brokers.kafka import KafkaBroker
    from .settings import load_settings

    broker = KafkaBroker(spec.broker, load_settings(broker=spec.broker))
    config = broker.consumer_config(spec.group)  # the same librdkafka tuning streamq uses
    config.pop("enable.auto.offset.store", None)
    consumer = Consumer(config)
    consumer.subscribe(spec.topics)
    size = spec.max_poll_records
    try:
        while not stop.is_set():
            batch = consumer.consume(size, 0.1)
            for m in batch:
                if m.error() is None:
                    work(m.value())
                    tick(m.timestamp()[1])
            if batch:
                consumer.commit(asynchronous=True)
    finally:
        consumer.close()


def _raw_redis(spec: BenchSpec, work: Any, tick: Any, stop: threading.Event) -> None:
    import redis

    from .brokers.redis_streams import stream_key
    from .message import TopicPartition

    r: Any = redis.Redis.from_url(spec.broker)
    keys = [stream_key(TopicPartition(t, p)) for t in spec.topics for p in range(spec.partitions)]
    for key in keys:
        try:
            r.xgroup_create(key, spec.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    consumer = f"raw-{os.getpid()}"
    streams = dict.fromkeys(keys, ">")
    size = spec.max_poll_records
    while not stop.is_set():
        reply = r.xreadgroup(spec.group, consumer, streams, count=size, block=100)
        if not reply:
            continue
        pipe = r.pipeline(transaction=False)
        for key, entries in reply:
            ids = []
            for entry_id, fields in entries:
                work(fields[b"v"])
                stamp = fields.get(b"t")
                tick(int(stamp) if stamp is not None else int(entry_id.split(b"-")[0]))
                ids.append(entry_id)
            pipe.xack(key, spec.group, *ids)
        pipe.execute()
    r.close()


def _raw_memory(spec: BenchSpec, work: Any, tick: Any, stop: threading.Event) -> None:
    from .brokers import connect
    from .settings import load_settings

    settings = load_settings(broker=spec.broker)
    backend: Any = connect(spec.broker).consumer(spec.group, settings)
    owned: set[Any] = set()
    backend.subscribe(spec.topics, owned.update, owned.difference_update, owned.difference_update)
    positions: dict[Any, int] = {}
    while not stop.is_set():
        batch = backend.poll_batch(spec.max_poll_records, 0.1)
        for m in batch:
            work(m.value)
            tick(m.timestamp)
            positions[m.tp] = m.offset + 1
        if batch:
            backend.commit(positions, sync=False)
    backend.close()


# -- the streamq side ------------------------------------------------------------------------


def build_app(spec: BenchSpec, slot: int | None) -> Any:
    """The streamq app doing the same work: one handler with the chosen options.

    ``slot`` None is the supervisor of ``--workers N``: it only needs the app to exist.
    """
    import streamq

    kind, sleep_s = parse_handler(spec.handler)
    tick: Callable[[int], None] = _no_tick
    if slot is not None:
        tick = Tally(spec.shm, slot).tick_fn()
    options: dict[str, Any] = {"ordering": spec.ordering, "dlq": False}
    if spec.executor in ("threads", "processes"):
        options["executor"] = spec.executor
    if spec.dedup != "none":
        options["dedup"] = spec.dedup
    app = streamq.App(
        spec.group,
        broker=spec.broker,
        max_poll_records=spec.max_poll_records,
        poll_timeout=0.1,
        **spec.extra,
    )
    handlers = [app.handler(t, **options) for t in spec.topics]

    def register(fn: Callable[..., Any]) -> None:
        for h in handlers:
            h(fn)

    if spec.executor == "processes":
        register(_POOL_HANDLERS[kind])
    elif spec.executor == "asyncio":
        if kind == "sleep":

            async def handle_async(msg: Message) -> None:
                await asyncio.sleep(sleep_s)
                tick(msg.timestamp)
        else:
            work = work_fn(kind, 0.0)

            async def handle_async(msg: Message) -> None:
                work(msg.value)
                tick(msg.timestamp)

        register(handle_async)
    elif kind == "noop":

        def handle_noop(msg: Message) -> None:
            tick(msg.timestamp)

        register(handle_noop)
    elif kind == "json":

        def handle_json(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            tick(msg.timestamp)

        register(handle_json)
    elif kind == "pydantic":

        def handle_model(value: BenchRecord, msg: Message) -> None:
            tick(msg.timestamp)

        register(handle_model)
    elif kind == "cpu":

        def handle_cpu(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
            _burn()
            tick(msg.timestamp)

        register(handle_cpu)
    else:

        def handle_sleep(msg: Message) -> None:
            time.sleep(sleep_s)
            tick(msg.timestamp)

        register(handle_sleep)
    return app


def _no_tick(timestamp_ms: int) -> None:
    pass


# -- module-level handlers for --executor processes: pool processes import them by name -------

_pool_state: dict[str, Any] = {}


def _pool_tick(timestamp_ms: int) -> None:
    tick = _pool_state.get("tick")
    if tick is None:
        spec = BenchSpec(**json.loads(os.environ["STREAMQ_BENCH_SPEC"]))
        _pool_state["sleep"] = parse_handler(spec.handler)[1]
        tick = _pool_state["tick"] = Tally(spec.shm, None, spec.workers).tick_fn()
    tick(timestamp_ms)


def pool_noop(msg: Message) -> None:
    _pool_tick(msg.timestamp)


def pool_json(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
    _pool_tick(msg.timestamp)


def pool_pydantic(value: BenchRecord, msg: Message) -> None:
    _pool_tick(msg.timestamp)


def pool_cpu(value: dict, msg: Message) -> None:  # type: ignore[type-arg]
    _burn()
    _pool_tick(msg.timestamp)


def pool_sleep(msg: Message) -> None:
    _pool_tick(msg.timestamp)  # first: it reads the sleep time
    time.sleep(_pool_state["sleep"])


_POOL_HANDLERS: dict[str, Callable[..., None]] = {
    "noop": pool_noop,
    "json": pool_json,
    "pydantic": pool_pydantic,
    "cpu": pool_cpu,
    "sleep": pool_sleep,
}


def __getattr__(name: str) -> Any:
    """``streamq.bench:app`` for ``--workers N``: each spawned worker builds its own app."""
    if name != "app":
        raise AttributeError(name)
    spec = BenchSpec(**json.loads(os.environ["STREAMQ_BENCH_SPEC"]))
    index = os.environ.get("STREAMQ_WORKER_INDEX")
    app = build_app(spec, None if index is None else int(index))
    globals()["app"] = app
    return app


# -- one drain, measured -----------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _proc_mem(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


class Monitor:
    """Reads the shared slots: when the drain starts and ends, and what it cost."""

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self._shm = _attach(spec.shm)
        self.view = _view(self._shm)

    def slots(self) -> range:
        return range(self.spec.slots)

    def count(self) -> int:
        v = self.view
        return sum(v[_HEADER + s * _SLOT + _COUNT] for s in self.slots())

    def pids(self) -> list[int]:
        v = self.view
        return [p for s in self.slots() if (p := v[_HEADER + s * _SLOT + _PID])]

    def all_workers_started(self) -> bool:
        v = self.view
        return all(v[_HEADER + s * _SLOT + _COUNT] for s in range(self.spec.workers))

    def cpu_at_first(self) -> float:
        v = self.view
        return sum(v[_HEADER + s * _SLOT + _CPU0] for s in self.slots()) / 1e9

    def cpu_now(self, pids: list[int]) -> float:
        if pids == [os.getpid()]:
            return time.process_time()  # this process: exact, not in clock ticks
        return sum(_proc_cpu(p) for p in pids)

    def first_ns(self) -> int:
        v = self.view
        stamps = [v[_HEADER + s * _SLOT + _FIRST] for s in self.slots()]
        return min(t for t in stamps if t) if any(stamps) else time.monotonic_ns()

    def latencies(self) -> list[int]:
        v = self.view
        out: list[int] = []
        for s in self.slots():
            base = _HEADER + s * _SLOT
            out.extend(v[base + _LAT0 + i] for i in range(v[base + _LAT_N]))
        return out

    def measure(
        self, produce_latency: Callable[[], None], done: Callable[[], None]
    ) -> dict[str, Any]:
        spec = self.spec
        n = spec.messages
        deadline_start = time.monotonic() + 120
        while self.count() == 0:
            if time.monotonic() > deadline_start:
                raise RuntimeError("no record was handled within 120 s of starting")
            time.sleep(0.002)
        started = self.first_ns()
        base = 0  # records before the window: only with several workers
        cpu_base: float | None = None
        if spec.workers > 1:
            # Members join one after another (a rebalance each): the window starts once every
            # worker handled a record, so it measures the group at full strength.
            join_by = time.monotonic() + 60
            while not self.all_workers_started() and time.monotonic() < join_by:
                time.sleep(0.002)
            started, base = time.monotonic_ns(), self.count()
            cpu_base = self.cpu_now(self.pids())
        pids = self.pids()
        rss_start = max((_proc_mem(p, "VmRSS:") for p in pids), default=0.0)
        limit = None if spec.max_seconds is None else time.monotonic() + spec.max_seconds
        while (handled := self.count()) < n:
            if limit is not None and time.monotonic() > limit:
                break
            time.sleep(0.002)
        # from the first record handled (stamped by its handler) to the sample that saw the
        # last one: at most one sampling interval late
        elapsed = (time.monotonic_ns() - started) / 1e9
        pids = self.pids()
        # CPU from each process's first record (its handler stamped it) to now
        cpu = self.cpu_now(pids) - (self.cpu_at_first() if cpu_base is None else cpu_base)
        timed = handled - base
        rss_peak = max((_proc_mem(p, "VmHWM:") for p in pids), default=0.0)
        rss_end = max((_proc_mem(p, "VmRSS:") for p in pids), default=0.0)
        lat: list[int] = []
        if handled >= n and spec.latency_topic:
            self.view[_PHASE] = 1
            produce_latency()
            wait_until = time.monotonic() + 10 + spec.latency_messages / spec.latency_rate
            while self.count() < n + spec.latency_messages and time.monotonic() < wait_until:
                time.sleep(0.005)
            lat = sorted(self.latencies())
        done()
        return {
            "handled": handled,
            "seconds": round(elapsed, 4),
            "msg_s": round(timed / elapsed) if elapsed > 0 else 0,
            "mb_s": round(timed * spec.size / elapsed / 1e6, 2) if elapsed > 0 else 0.0,
            "cpu_s_per_m": round(cpu / timed * 1e6, 2) if timed else None,
            "timed_records": timed,
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "p50_ms": _pct(lat, 0.50),
            "p99_ms": _pct(lat, 0.99),
            "latency_samples": len(lat),
            "workers": len(pids),
        }

    def close(self) -> None:
        self.view.release()
        self._shm.close()


def _pct(values: list[int], q: float) -> float | None:
    if not values:
        return None
    return float(values[min(len(values) - 1, int(q * len(values)))])


def drain(spec: BenchSpec, side: str) -> dict[str, Any]:
    """Run one side's drain to completion in this process (and its workers); report it."""
    monitor = Monitor(spec)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if side == "raw":
            threads = [threading.Thread(target=raw_drain, args=(spec, 0, stop), daemon=True)]
            procs.extend(_spawn_raw(spec, slot) for slot in range(1, spec.workers))
            idle = _proc_mem(os.getpid(), "VmRSS:")
            threads[0].start()

            def finish() -> None:
                stop.set()
                for p in procs:
                    p.send_signal(signal.SIGTERM)

            result = monitor.measure(lambda: _produce_latency(spec), finish)
            threads[0].join(30)
            for p in procs:
                p.wait(30)
        else:
            os.environ["STREAMQ_BENCH_SPEC"] = json.dumps(asdict(spec))
            app = build_app(spec, 0) if spec.workers == 1 else None
            idle = _proc_mem(os.getpid(), "VmRSS:")  # imports done, nothing consumed yet
            box: dict[str, Any] = {}

            def watch() -> None:
                try:
                    box["result"] = monitor.measure(
                        lambda: _produce_latency(spec), lambda: os.kill(os.getpid(), signal.SIGTERM)
                    )
                except BaseException as exc:
                    box["error"] = exc
                    os.kill(os.getpid(), signal.SIGTERM)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            port = 0 if spec.metrics else None
            if app is not None:
                app.run(metrics_port=port)
            else:
                import streamq.bench as me

                me.app.run(workers=spec.workers, metrics_port=port)
            watcher.join(30)
            if "error" in box:
                raise box["error"]
            result = box["result"]
        # before the consumer started, in the process that consumes (one worker only)
        result["rss_idle_mb"] = round(idle, 1) if spec.workers == 1 else None
        return result
    finally:
        stop.set()
        monitor.close()


def _spawn_raw(spec: BenchSpec, slot: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamq.bench", "--raw-member", str(slot), json.dumps(asdict(spec))]
    )


def _produce_latency(spec: BenchSpec) -> None:
    """Records at a steady rate while the consumer runs, each timed broker-stamp to handler."""
    from .producer import Producer

    extra: dict[str, Any] = {}
    if spec.broker.startswith("kafka://"):
        extra["kafka"] = {"linger.ms": 0}
    with Producer(spec.broker, **extra) as producer:
        interval = 1.0 / spec.latency_rate
        start = time.perf_counter()
        for i in range(spec.latency_messages):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(spec.latency_topic, payload(i, spec.size), key=f"k{i % spec.keys}")
        producer.flush(30)


# -- the whole benchmark ---------------------------------------------------------------------


def fill(spec: BenchSpec) -> None:
    """Create the topic and write the backlog; not timed."""
    from .brokers import connect
    from .producer import Producer

    connect(spec.broker).admin().create_topic(spec.topic, spec.partitions)
    if spec.broker.startswith("kafka://"):
        _fill_kafka(spec)
        return
    values = [payload(i, spec.size) for i in range(min(spec.messages, 1000))]
    with Producer(spec.broker) as producer:
        for i in range(spec.messages):
            producer.send(spec.topic, values[i % len(values)], key=f"k{i % spec.keys}")
            if i % 10_000 == 9_999:
                producer.flush(60)


def _fill_kafka(spec: BenchSpec) -> None:
    from confluent_kafka import Producer as CkProducer

    from .murmur2 import partition_for_key

    producer = CkProducer(
        {"bootstrap.servers": spec.broker.split("://", 1)[1].split("?")[0], "linger.ms": 20,
         "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000}
    )  # fmt: skip
    values = [payload(i, spec.size) for i in range(min(spec.messages, 1000))]
    keys = [f"k{i}".encode() for i in range(spec.keys)]
    parts = [partition_for_key(k, spec.partitions) for k in keys]
    for i in range(spec.messages):
        k = i % spec.keys
        while True:
            try:
                producer.produce(spec.topic, values[i % len(values)], keys[k], partition=parts[k])
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(300):
        raise RuntimeError("the Kafka fill did not finish within 300 s")


Progress = Callable[[str, int, int], None]


def run_bench(spec: BenchSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Fill once, then drain raw and streamq alternately; the summary compares medians."""
    from .brokers import connect

    spec.validate()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    spec = replace(spec, topic=topic)
    fill(spec)
    admin = connect(spec.broker).admin()
    runs: list[dict[str, Any]] = []
    sides = ["raw", "streamq"] if spec.raw else ["streamq"]
    shm = shared_memory.SharedMemory(create=True, size=(_HEADER + spec.slots * _SLOT) * 8)
    view = _view(shm)
    try:
        for r in range(spec.rounds):
            for side in sides:
                for i in range(len(view)):
                    view[i] = 0
                one = replace(spec, shm=shm.name, group=f"{topic}-{side}-{r}")
                if spec.latency_messages:
                    one = replace(one, latency_topic=f"{topic}-lat-{side}-{r}")
                    admin.create_topic(one.latency_topic, spec.partitions)
                result = _drain_with_progress(one, side, view, progress)
                result |= {"side": side, "round": r + 1}
                runs.append(result)
    finally:
        view.release()
        shm.close()
        shm.unlink()
    return summarize(spec, runs)


def _drain_with_progress(
    spec: BenchSpec, side: str, view: Any, progress: Progress | None
) -> dict[str, Any]:
    finished = threading.Event()

    def report() -> None:
        while not finished.wait(0.1):
            if progress is not None:
                count = sum(view[_HEADER + s * _SLOT + _COUNT] for s in range(spec.slots))
                progress(side, min(count, spec.messages), spec.messages)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        if spec.broker.startswith("memory://"):
            quiet = logging.getLogger("streamq")
            level = quiet.level
            quiet.setLevel(logging.WARNING)  # the table is the output, not the worker's log
            try:
                return drain(spec, side)
            finally:
                quiet.setLevel(level)
        out = subprocess.run(
            [sys.executable, "-m", "streamq.bench", "--drain", side, json.dumps(asdict(spec))],
            capture_output=True,
            check=False,
        )
        lines = out.stdout.decode().strip().splitlines()
        if out.returncode != 0 or not lines:
            raise RuntimeError(
                f"the {side} drain failed (exit {out.returncode}): "
                + out.stderr.decode(errors="replace")[-2000:]
            )
        return dict(json.loads(lines[-1]))
    finally:
        finished.set()
        reporter.join()


def summarize(spec: BenchSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(side: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["side"] == side and r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    summary: dict[str, Any] = {}
    for side in ("raw", "streamq"):
        if any(r["side"] == side for r in runs):
            summary[side] = {
                k: median(side, k)
                for k in ("msg_s", "mb_s", "cpu_s_per_m", "p50_ms", "p99_ms", "rss_start_mb",
                          "rss_peak_mb")
            }  # fmt: skip
    if "raw" in summary and summary["raw"]["msg_s"]:
        # per round, then the median: each streamq drain is compared with the raw drain next to it
        ratios = []
        for r in range(1, spec.rounds + 1):
            raw = [x["msg_s"] for x in runs if x["side"] == "raw" and x["round"] == r]
            ours = [x["msg_s"] for x in runs if x["side"] == "streamq" and x["round"] == r]
            if raw and ours and raw[0]:
                ratios.append(ours[0] / raw[0])
        summary["ratio"] = round(statistics.median(ratios), 3) if ratios else None
    params = asdict(spec)
    for k in ("shm", "group", "extra", "latency_topic"):
        params.pop(k)
    return {
        "spec": params,
        "implementation": IMPLEMENTATION,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "summary": summary,
        "runs": runs,
    }


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--drain"]:
        spec = BenchSpec(**json.loads(argv[2]))
        result = drain(spec, argv[1])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return 0
    if argv[:1] == ["--raw-member"]:
        spec = BenchSpec(**json.loads(argv[2]))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        raw_drain(spec, int(argv[1]), stop)
        return 0
    sys.stderr.write("use `streamq bench`; this entry point is for its drains\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
