"""Shared fixtures: the per-record core, unique memory logs, and real brokers.

Broker fixtures follow confluent-kafka-python's bring-your-own pattern: STREAMQ_KAFKA_BOOTSTRAP
or STREAMQ_REDIS_URL point at an existing cluster; otherwise a private Apache Kafka (a JVM from
jars Maven resolves, streamq.testing.kafka) or redis-server is started on a free port. A
broker that cannot be had skips the test locally, and fails it when STREAMQ_REQUIRE_BROKERS=1
(CI), so CI can never go green by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import streamq
from streamq import dispatch
from streamq.brokers import connect
from streamq.testing import kafka as kafka_testing
from tests.core import COMPILED, CORES, Core

REQUIRE_BROKERS = os.environ.get("STREAMQ_REQUIRE_BROKERS") == "1"

# Like aiokafka: if the compiled core was expected, it must be the one that loaded.
if not dispatch.NO_EXTENSIONS:
    assert dispatch.IMPLEMENTATION == "cython", (
        "Expected the compiled dispatch core (streamq._dispatch) but it did not load. "
        "Rebuild with `pip install -e .`, or run with STREAMQ_NO_EXTENSIONS=1 to test the "
        "pure-Python core on purpose."
    )


@pytest.fixture(scope="session", params=[c.param for c in CORES])
def core(request: pytest.FixtureRequest) -> Core:
    """The per-record core a test runs on, once per implementation; the id says which
    (``cython`` is marked, and absent under STREAMQ_NO_EXTENSIONS=1)."""
    return request.param


def deselect_compiled_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a compiled core, tests marked ``cython`` (they compare the two cores, or need
    the compiled one) are deselected and counted in the summary, as the ``cython`` param of
    ``core`` is absent: a skip would read as a core that failed to load."""
    if COMPILED is not None:
        return
    needing = [item for item in items if item.get_closest_marker("cython") is not None]
    if needing:
        config.hook.pytest_deselected(items=needing)
        items[:] = [item for item in items if item.get_closest_marker("cython") is None]


KAFKA_FIXTURES = {"kafka_bootstrap", "private_kafka", "kafka_cluster3", "kafka_url"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that talks to Kafka carries the ``kafka`` marker, so ``-m kafka`` (the
    KIP-848 pass of ``make test``) selects exactly them, the ``broker[kafka]`` cases too."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = set(getattr(item, "fixturenames", ()))
        if "kafka" in params.values() or names & KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
    deselect_compiled_only(config, items)


@pytest.fixture(autouse=True)
def no_leftover_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A failed test must not leave ``streamq run`` processes behind for the next one (their
    group members, or a ``Popen`` collected while running that fails an unrelated test)."""
    from tests.integration import helpers

    started: list[helpers.Worker] = []
    original = helpers.Worker.__init__

    def tracking(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(helpers.Worker, "__init__", tracking)
    yield
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait(10)


@pytest.fixture
def memory_url() -> str:
    """A fresh in-process log per test, so tests never share state."""
    return f"memory://test-{uuid.uuid4().hex[:12]}"


def unavailable(reason: str) -> None:
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason} (STREAMQ_REQUIRE_BROKERS=1: a missing broker is a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class RedisServer:
    """A private redis-server the test may kill, freeze and restart."""

    port: int
    dir: Path
    durable: bool
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.dir), "--save", "", "--daemonize", "no"]  # fmt: skip
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, 10, self.proc):
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        self._wait_loaded(30)

    def _wait_loaded(self, timeout: float) -> None:
        """Until it has loaded its AOF: it takes connections before, but answers LOADING.

        (CI: a restarted server's first XINFO failed with BusyLoadingError.) INFO is one of
        the commands it serves while loading.
        """
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while client.info("persistence").get("loading"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} still loading its AOF")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, durable (AOF, fsync always) redis-server on a free port.

    Started even when STREAMQ_REDIS_URL names a shared server: the tests that take this one
    kill, freeze or reconfigure it (that used to skip them silently, in CI too).
    """
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path, durable=True)
    try:
        server.start()
    except RuntimeError as exc:
        unavailable(str(exc))
    yield server
    server.kill()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL: STREAMQ_REDIS_URL if set, else a private server."""
    url = os.environ.get("STREAMQ_REDIS_URL")
    if url:
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def _kafka_from_docker() -> tuple[Iterator[str] | None, str]:
    """Apache Kafka in a container where a Docker engine runs (never on CI machines here)."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return None, "no Docker engine"
    try:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(f"apache/kafka:{kafka_testing.DEFAULT_VERSION}").with_kraft()
        container.start()
    except Exception as exc:
        return None, f"testcontainers: {exc}".splitlines()[0]

    def serve() -> Iterator[str]:
        try:
            yield container.get_bootstrap_server()
        finally:
            container.stop()

    return serve(), ""


def start_kafka(nodes: int = 1, **options: Any) -> kafka_testing.KafkaCluster:
    """A private Apache Kafka (the JVM launcher); KafkaLaunchError says why it cannot start.

    ``options`` go to ``KafkaCluster.start``: broker ``settings``, a ``secure`` listener.
    Test nodes run on the first JIT tier (``QUICK_JIT``): CI's passes share two cores.
    """
    return kafka_testing.KafkaCluster.start(nodes, jvm_options=kafka_testing.QUICK_JIT, **options)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """One Apache Kafka for every test that only needs a broker (unique topics and groups).

    STREAMQ_KAFKA_BOOTSTRAP, else a private single node from the JVM launcher, else a
    testcontainers broker where Docker runs, else skip (fail in CI).
    """
    existing = os.environ.get("STREAMQ_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    try:
        cluster = start_kafka()
    except kafka_testing.KafkaLaunchError as exc:
        served, why = _kafka_from_docker()
        if served is None:
            unavailable(f"no Apache Kafka: {exc}; {why}")
        yield from served  # type: ignore[misc]
        return
    try:
        yield cluster.bootstrap
    finally:
        cluster.close()


def _private_kafka(nodes: int, **options: Any) -> Iterator[kafka_testing.KafkaCluster]:
    if os.environ.get("STREAMQ_KAFKA_BOOTSTRAP"):
        pytest.skip("STREAMQ_KAFKA_BOOTSTRAP is set: tests that kill Kafka need a private one")
    try:
        cluster = start_kafka(nodes, **options)
    except kafka_testing.KafkaLaunchError as exc:
        unavailable(f"no private Apache Kafka: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


# For a test whose node needs broker settings of its own: ``with own_kafka(settings=...)``.
own_kafka = contextlib.contextmanager(_private_kafka)


@pytest.fixture
def private_kafka() -> Iterator[kafka_testing.KafkaCluster]:
    """A single Kafka node of this test's own, which it may kill, freeze and restart."""
    yield from _private_kafka(1)


@pytest.fixture
def kafka_cluster3() -> Iterator[kafka_testing.KafkaCluster]:
    """Three Kafka nodes (replication factor 3, min.insync.replicas 2) for replication faults."""
    yield from _private_kafka(3)


# -- both real brokers, for scenarios that must hold on each ------------------------------------


@dataclass
class Broker:
    kind: str
    url: str
    dedup_url: str  # a Redis for the dedup store, whatever the broker

    def topic(self, partitions: int = 2) -> str:
        name = f"scenario-{uuid.uuid4().hex[:8]}"
        connect(self.url).admin().create_topic(name, partitions)
        return name

    def produce(self, topic: str, records: list[tuple[int, bytes]]) -> dict[int, tuple[int, int]]:
        """Send (id, value) pairs keyed by id % 20; return id -> (partition, offset)."""
        with streamq.Producer(self.url) as producer:
            futures = {i: producer.send(topic, value, key=f"k{i % 20}") for i, value in records}
            assert producer.flush(60) == 0
        return {i: (f.result().partition, f.result().offset) for i, f in futures.items()}

    @staticmethod
    def ends(coords: dict[int, tuple[int, int]]) -> dict[int, int]:
        """Per partition, one past the last offset produced."""
        out: dict[int, int] = {}
        for partition, offset in coords.values():
            out[partition] = max(out.get(partition, 0), offset + 1)
        return out

    def uncommitted(self, topic: str, group: str, ends: dict[int, int]) -> dict[int, object]:
        """Partitions where ``group`` has not committed everything up to ``ends``.

        Kafka: the committed offset against the end; Redis: entries never delivered to the
        group, or delivered and not acknowledged (XINFO GROUPS lag and pending).
        """
        if self.kind == "kafka":
            from confluent_kafka import Consumer, KafkaException, TopicPartition

            bootstrap = self.url.removeprefix("kafka://")
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
            deadline = time.monotonic() + 30
            try:
                # a node just started, or a coordinator moving, answers "coordinator load in
                # progress" or "not coordinator" (not flagged retriable): ask again
                while True:
                    try:
                        found = consumer.committed([TopicPartition(topic, p) for p in ends], 20)
                        break
                    except KafkaException:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
            finally:
                consumer.close()
            return {tp.partition: tp.offset for tp in found if tp.offset != ends[tp.partition]}
        admin = connect(self.url).admin()
        try:
            lag = admin.lag(group, topic)  # type: ignore[attr-defined]
        finally:
            admin.close()
        return {tp.partition: state for tp, state in lag.items() if state != (0, 0)}

    def dlq_origins(self, topic: str) -> list[tuple[int, int]]:
        """(partition, offset) of the source of every DLQ record, duplicates included."""
        headers = self._dlq_headers(f"{topic}.dlq")
        return [(int(h["streamq-original-partition"]), int(h["streamq-original-offset"]))
                for h in headers]  # fmt: skip

    def _dlq_headers(self, dlq: str) -> list[dict[str, bytes]]:
        from streamq.brokers.view import read_topic
        from streamq.settings import load_settings

        settings = load_settings(broker=self.url, broker_timeout=20)
        return [dict(m.raw_headers or []) for m in read_topic(self.url, dlq, settings)]


@pytest.fixture(params=["kafka", "redis"])
def broker(request: pytest.FixtureRequest, redis_server) -> Broker:
    if request.param == "kafka":
        return Broker("kafka", f"kafka://{request.getfixturevalue('kafka_bootstrap')}",
                      redis_server.url)  # fmt: skip
    return Broker("redis", redis_server.url, redis_server.url)
