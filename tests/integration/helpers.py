"""Helpers for broker integration tests: test apps as real processes, and their ledgers.

The apps are modules under tests/apps/ (its docstring says how one is picked and set up); a
test names one with ``ledger_app`` or ``app_spec`` and starts it with ``start_worker``. Each
writes one line per handler event with ``os.write`` on an O_APPEND fd opened once, so a line
that reached the kernel survives SIGKILL (RELIABILITY.md, "Handler ledger").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.apps import settings_env

ROOT = Path(__file__).resolve().parents[2]

# ``make test`` runs every Kafka test twice: with the classic group protocol, then with
# KIP-848 (STREAMQ_GROUP_PROTOCOL=consumer, read by every App's settings).
KIP848 = os.environ.get("STREAMQ_GROUP_PROTOCOL") == "consumer"

# A SIGKILLed member's partitions move after the session timeout: 6 s keeps fault tests
# short. Under KIP-848 the broker owns both (streamq.testing.kafka sets the same values).
FAST_GROUP = {} if KIP848 else {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def group_settings(session_ms: int) -> dict:
    """FAST_GROUP with a longer session; under KIP-848 the broker's 6 s session stays."""
    return FAST_GROUP if KIP848 else {**FAST_GROUP, "session.timeout.ms": session_ms}


@dataclass(frozen=True)
class AppSpec:
    """A test app under tests/apps/ (``module:attribute``) and the settings its worker reads.

    ``env`` holds the ``APP_<NAME>`` JSON variables of ``tests.apps.settings_env``; they go
    into the environment of each process that loads the app, never into the test's own.
    """

    spec: str
    env: Mapping[str, str] = field(default_factory=dict)

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with this app's settings, and the repository root on PYTHONPATH so that
        ``tests.apps`` imports in a ``streamq`` process whose cwd is the test's tmp_path."""
        path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return {**env, **self.env, "PYTHONPATH": path}


def app_spec(module: str, kafka: dict | None = None, **settings: Any) -> AppSpec:
    """The app ``tests.apps.<module>:app`` with ``kafka`` (``FAST_GROUP`` unless given) and
    ``settings``, each read there with ``tests.apps.setting``."""
    kafka = FAST_GROUP if kafka is None else kafka
    return AppSpec(f"tests.apps.{module}:app", settings_env(kafka=kafka, **settings))


def ledger_app(extra: dict | None = None, kafka: dict | None = None) -> AppSpec:
    """The ledger app (tests/apps/ledger.py); ``extra`` goes to its ``App`` as keywords."""
    return app_spec("ledger", kafka, extra=extra or {})


def write_app(where: Path, extra: dict | None = None, kafka: dict | None = None) -> AppSpec:
    """The ledger app, for scripts/chaos.py until it calls ``ledger_app``: ``where`` is unused,
    since nothing is written any more."""
    return ledger_app(extra, kafka)


@dataclass
class Entry:
    pid: int
    partition: int
    offset: int
    key: str
    id: int
    mono_ns: int


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Parsed:
    """A ledger file read so far: its inode, the bytes parsed (whole lines), the entries."""

    inode: int
    size: int = 0
    entries: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))


_LEDGERS: dict[Path, _Parsed] = {}  # the most recently read last; a few kept, not a session's
_LEDGERS_KEPT = 8
_LEDGERS_LOCK = threading.Lock()


def read_ledger(path: Path, kind: str = "E") -> list[Entry]:
    """Handler ends ("E", the default) or starts ("S") from a ledger file.

    Parsed incrementally: tests poll ledgers of thousands of lines ten times a second
    (``wait_until``), and parsing 12,000 lines anew took 150 ms on CI's busy cores, most of a
    core spent waiting. Only the lines appended since the last call are parsed.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    with _LEDGERS_LOCK:
        parsed = _LEDGERS.pop(path, None)
        if parsed is None or parsed.inode != stat.st_ino or stat.st_size < parsed.size:
            parsed = _Parsed(stat.st_ino)  # new, or a new file there
        _LEDGERS[path] = parsed
        if len(_LEDGERS) > _LEDGERS_KEPT:
            del _LEDGERS[next(iter(_LEDGERS))]
        if stat.st_size > parsed.size:
            with path.open("rb") as f:
                f.seek(parsed.size)
                chunk = f.read()
            whole = chunk.rfind(b"\n") + 1  # a line being written right now: read it next time
            parsed.size += whole
            entries = parsed.entries
            for line in chunk[:whole].decode().splitlines():
                what, pid, part, off, key, ident, ns = line.split()
                entries[what].append(Entry(int(pid), int(part), int(off), key, int(ident), int(ns)))
        return list(parsed.entries.get(kind, ()))


def streamq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq", *args]


def app_env(broker: str, topic: str, group: str, ledger: Path, **more: str) -> dict[str, str]:
    env = {**os.environ, "BROKER": broker, "TOPIC": topic, "GROUP": group, "LEDGER": str(ledger)}
    env.update(more)
    return env


class Worker:
    """A ``streamq run`` process whose stderr goes to a file the test can watch."""

    def __init__(
        self, cwd: Path, app: AppSpec, env: dict[str, str], *extra: str,
        options: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.log = cwd / f"worker-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                streamq_cmd(*options, "run", app.spec, *extra), cwd=cwd, env=app.environ(env),
                stdout=out, stderr=out,
            )  # fmt: skip
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return code, self.output()


def start_worker(cwd: Path, app: AppSpec, env: dict[str, str], *extra: str) -> Worker:
    return Worker(cwd, app, env, *extra)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll for a condition; the deadline only detects hangs, it is not a speed test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def max_overlap(path: Path) -> int:
    """Most handlers running at one instant (every worker), from the S and E lines."""
    events = [(e.mono_ns, 1) for e in read_ledger(path, "S")]
    events += [(e.mono_ns, -1) for e in read_ledger(path, "E")]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


def check_per_key_order(entries: list[Entry]) -> None:
    """Per key, ids are first handled in increasing order (I3)."""
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for e in sorted(entries, key=lambda e: e.mono_ns):
        if e.id not in seen:
            seen.add(e.id)
            first_seen[e.key].append(e.id)
    for key, ids in first_seen.items():
        assert ids == sorted(ids), f"key {key} handled out of order"


def duplicates(entries: list[Entry]) -> list[int]:
    counts: dict[int, int] = defaultdict(int)
    for e in entries:
        counts[e.id] += 1
    return sorted(i for i, c in counts.items() if c > 1)


def get(port: int, path: str) -> tuple[int, dict]:
    """A worker's health route: (status, JSON body); (0, {}) while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


class Scrape:
    """One scrape of /metrics, parsed into (name, labels) -> value."""

    def __init__(self, port: int) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(
            v for n, ls, v in self.samples
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        )  # fmt: skip

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n, ls, v in self.samples:
            if n == name:
                out[ls[label]] += v
        return dict(out)


def kafka_committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition, as the broker has it (negative: none)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def produce_keyed(url: str, topic: str, n: int, keys: int = 50) -> list[Any]:
    """Send n JSON records ``{"i", "k"}`` keyed ``k{i % keys}``; their delivery reports."""
    import streamq

    with streamq.Producer(url) as producer:
        futures = [
            producer.send(topic, {"i": i, "k": f"k{i % keys}"}, key=f"k{i % keys}")
            for i in range(n)
        ]
        assert producer.flush(60) == 0
    return [fut.result() for fut in futures]


def end_offsets(reports: list[Any]) -> dict[int, int]:
    """The end offset per partition that the delivery reports show."""
    ends: dict[int, int] = {}
    for meta in reports:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def redis_group_state(url: str, group: str, topic: str, partitions: int) -> list[dict]:
    """XINFO GROUPS of ``group`` on each of the topic's streams."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [info for p in range(partitions) for info in client.xinfo_groups(f"{topic}:{p}")
                if info["name"] == group.encode()]  # fmt: skip
    finally:
        client.close()
