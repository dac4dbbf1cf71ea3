"""Helpers for broker integration tests: test apps as real processes, and their ledgers.

A test app writes one line per handled record with ``os.write`` on an O_APPEND fd opened
once, so a line that reached the kernel survives SIGKILL (RELIABILITY.md, "Handler ledger").
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


APP_TEMPLATE = """
import os, time
import streamq

LEDGER = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
SLEEP = float(os.environ.get("HANDLER_SLEEP", "0"))
SLOW_ID = int(os.environ.get("SLOW_ID", "-1"))
SLOW_FOR = float(os.environ.get("SLOW_FOR", "0"))
KILL_ID = int(os.environ.get("KILL_ID", "-1"))  # this record SIGKILLs the worker

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka={kafka!r},
    revoke_timeout=3,
    poll_timeout=0.05,
    commit_interval=0.2,
    **{extra!r},
)

@app.handler(os.environ["TOPIC"], dedup=os.environ.get("DEDUP") or None)
def handle(value: dict, msg: streamq.Message) -> None:
    coords = f"{{msg.partition}} {{msg.offset}} {{value['k']}} {{value['i']}}"
    os.write(LEDGER, f"S {{os.getpid()}} {{coords}} {{time.monotonic_ns()}}\\n".encode())
    if value["i"] == KILL_ID:
        os.kill(os.getpid(), 9)
    if SLEEP:
        time.sleep(SLEEP)
    if value["i"] == SLOW_ID:
        time.sleep(SLOW_FOR)
    os.write(LEDGER, f"E {{os.getpid()}} {{coords}} {{time.monotonic_ns()}}\\n".encode())
"""


@dataclass
class Entry:
    pid: int
    partition: int
    offset: int
    key: str
    id: int
    mono_ns: int


def write_app(
    where: Path, name: str = "ledger_app", extra: dict | None = None, kafka: dict | None = None
) -> str:
    settings = FAST_GROUP if kafka is None else kafka
    (where / f"{name}.py").write_text(
        textwrap.dedent(APP_TEMPLATE.format(kafka=settings, extra=extra or {}))
    )
    return f"{name}:app"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_ledger(path: Path, kind: str = "E") -> list[Entry]:
    """Handler ends ("E", the default) or starts ("S") from a ledger file."""
    if not path.exists():
        return []
    out = []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line being written right now: read it next time
    for line in lines:
        what, pid, part, off, key, ident, ns = line.split()
        if what == kind:
            out.append(Entry(int(pid), int(part), int(off), key, int(ident), int(ns)))
    return out


def streamq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq", *args]


def app_env(broker: str, topic: str, group: str, ledger: Path, **more: str) -> dict[str, str]:
    env = {**os.environ, "BROKER": broker, "TOPIC": topic, "GROUP": group, "LEDGER": str(ledger)}
    env.update(more)
    return env


class Worker:
    """A ``streamq run`` process whose stderr goes to a file the test can watch."""

    def __init__(
        self, cwd: Path, spec: str, env: dict[str, str], *extra: str, options: tuple[str, ...] = ()
    ) -> None:
        self.log = cwd / f"worker-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                streamq_cmd(*options, "run", spec, *extra), cwd=cwd, env=env, stdout=out,
                stderr=out,
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


def start_worker(cwd: Path, spec: str, env: dict[str, str], *extra: str) -> Worker:
    return Worker(cwd, spec, env, *extra)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll for a condition; the deadline only detects hangs, it is not a speed test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


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
