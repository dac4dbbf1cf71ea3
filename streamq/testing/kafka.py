"""Apache Kafka as a plain JVM process, for tests, benchmarks and contributors.

Integration tests must run against the broker users run, not a look-alike: a protocol clone
got high watermarks, group descriptions, static-membership fencing and KIP-848 wrong, and
every one of those hid a streamq bug or left a guarantee unproven. Docker is not everywhere,
but Java and Maven are easy to have, so this module resolves the broker jars of Apache Kafka
from Maven Central once into a cache (``~/.cache/streamq/kafka-<version>``), formats a fresh
KRaft log dir and starts combined broker+controller nodes on free loopback ports.

    with KafkaCluster.start(nodes=1) as cluster:
        cluster.bootstrap  # "127.0.0.1:41234"

``python -m streamq.testing.kafka [--nodes 3]`` starts one for a shell and prints its address.
Nothing here is imported by streamq itself: ``pip install streamq`` never needs Java.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_VERSION",
    "QUICK_JIT",
    "KafkaCluster",
    "KafkaLaunchError",
    "KafkaNode",
    "SaslSsl",
    "resolve_jars",
]

DEFAULT_VERSION = "4.2.2"
# Kafka 4.x logs through slf4j 1.7; log4j-core arrives transitively, its binding does not.
LOG4J_VERSION = "2.25.3"

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.streamq</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Warnings and errors to server.log, plus the one line that says the node is up.
LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = info
"""

JVM_OPTS = [
    "-Xms256m", "-Xmx768m", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]  # fmt: skip

# For test nodes and tools that live minutes: the first JIT tier only. A node's start costs
# half the CPU (4.3 s vs 8.4 s here) and a light load 45% less; C2's faster code only pays
# off in long runs under load, such as the benchmarks, which keep the default.
QUICK_JIT = ("-XX:TieredStopAtLevel=1",)


class KafkaLaunchError(RuntimeError):
    """Why a broker could not be had, in one line (no java, no mvn, jars not resolvable...)."""


def cache_root() -> Path:
    env = os.environ.get("STREAMQ_KAFKA_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamq"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else None
    if java is None or not os.access(java, os.X_OK):
        java = shutil.which("java")
    if java is None:
        raise KafkaLaunchError(
            "no java on PATH: Apache Kafka needs Java 17+ (apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if found is None or int(found.group(1)) < 17:
        seen = found.group(1) if found else "unknown"
        raise KafkaLaunchError(f"{java} is Java {seen}: Apache Kafka 4.x needs Java 17+")
    return java


def resolve_jars(version: str = DEFAULT_VERSION) -> Path:
    """The folder of broker jars for ``version``, resolved by Maven once and cached.

    A file lock makes parallel test processes wait for one resolution instead of racing.
    """
    root = cache_root() / f"kafka-{version}"
    jars, done = root / "jars", root / ".complete"
    if done.exists():
        return jars
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return jars
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaLaunchError(
                f"no mvn on PATH and no cached jars in {root}: install Maven "
                "(apt-get install maven) or point STREAMQ_KAFKA_BOOTSTRAP at a cluster"
            )
        (root / "pom.xml").write_text(POM.format(version=version, log4j=LOG4J_VERSION))
        shutil.rmtree(jars, ignore_errors=True)
        out = subprocess.run(
            [mvn, "-B", "-q", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if out.returncode != 0 or not any(jars.glob(f"kafka_2.13-{version}.jar")):
            errors = [ln for ln in (out.stdout + out.stderr).splitlines() if "ERROR" in ln]
            why = errors[0].strip() if errors else f"mvn exited with {out.returncode}"
            raise KafkaLaunchError(f"cannot resolve Apache Kafka {version} jars: {why}")
        done.touch()
    return jars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _random_uuid() -> str:
    """A Kafka ``Uuid`` string (url-safe base64, no padding), without starting a JVM.

    Never one that starts with "-": ``kafka-storage format -t -xyz`` reads it as an option
    and fails (one start in 64 did).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener (mechanism PLAIN) beside the plaintext one, on every node.

    For testing clients with TLS and a password; the plaintext listener keeps serving the
    nodes themselves and the test's own admin. ``keystore`` is a PKCS#12 file with the node's
    key and certificate (for 127.0.0.1), opened with ``keystore_password``.
    """

    users: dict[str, str]
    keystore: Path
    keystore_password: str

    def settings(self) -> dict[str, str]:
        users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        return {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
            "listener.name.sasl_ssl.ssl.keystore.type": "PKCS12",
            "listener.name.sasl_ssl.ssl.keystore.location": str(self.keystore),
            "listener.name.sasl_ssl.ssl.keystore.password": self.keystore_password,
        }  # fmt: skip


@dataclass
class KafkaNode:
    """One combined broker+controller JVM the caller may kill, freeze and restart."""

    node_id: int
    port: int
    controller_port: int
    dir: Path
    jars: Path
    proc: subprocess.Popen[bytes] | None = None
    secure_port: int | None = None  # the SASL_SSL listener, when the cluster has one
    jvm_options: tuple[str, ...] = ()  # after JVM_OPTS: see KafkaCluster.start

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listeners(self) -> str:
        out = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        if self.secure_port is not None:
            out += f",SASL_SSL://127.0.0.1:{self.secure_port}"
        return out

    def own_ports(self, value: str) -> str:
        """Fill ``{port}`` and ``{controller_port}`` in a setting with this node's own.

        For a listener of the test's own beside the standard ones (a fault proxy's).
        """
        return value.replace("{port}", str(self.port)).replace(
            "{controller_port}", str(self.controller_port)
        )

    @property
    def log_dir(self) -> Path:
        return self.dir / "data"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self, java: str) -> None:
        """Start the JVM on the existing (formatted) log dir; returns without waiting."""
        cmd = [java, *JVM_OPTS, *self.jvm_options,
               f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
               f"-Dkafka.logs.dir={self.dir}", "-cp", f"{self.jars}/*", "kafka.Kafka",
               str(self.dir / "server.properties")]  # fmt: skip
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def kill(self) -> None:
        """SIGKILL: the log dir stays, so :meth:`KafkaCluster.restart` brings the node back."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen JVM still dies, but reap it
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL past ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def why_dead(self) -> str:
        """The first error the JVM wrote, for a one-line startup failure."""
        text = ""
        for name in ("stdout.log", "server.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        for line in text.splitlines():
            if "ERROR" in line or "Exception" in line:
                return line.strip()[:300]
        return f"exit code {self.proc.poll() if self.proc else None}"

    def exited_at_start(self) -> KafkaLaunchError | None:
        """The error to raise when this node was launched and its JVM has exited."""
        if self.proc is None or self.alive():
            return None
        return KafkaLaunchError(f"Kafka node {self.node_id} exited at start: {self.why_dead()}")

    def last_complaint(self) -> str:
        """The last WARN or ERROR of a live node that is slow to join, for a timeout's message."""
        path = self.server_log
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in reversed(lines):
            if " WARN " in line or " ERROR " in line:
                return line.strip()[:300]
        return f"{len(lines)} log lines, no warning"


# Settings for a fast, small test node; the caller's ``overrides`` win.
BASE_SETTINGS = {
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "group.initial.rebalance.delay.ms": "0",
    # classic protocol: let tests ask for short session timeouts
    "group.min.session.timeout.ms": "1000",
    # KIP-848 and share groups take heartbeats and sessions from the broker
    "group.consumer.min.heartbeat.interval.ms": "100",
    "group.consumer.heartbeat.interval.ms": "500",
    "group.consumer.min.session.timeout.ms": "1000",
    "group.consumer.session.timeout.ms": "6000",
    "group.share.min.heartbeat.interval.ms": "100",
    "group.share.heartbeat.interval.ms": "500",
    "group.share.min.session.timeout.ms": "1000",
    "group.share.session.timeout.ms": "6000",
    # share groups: tests run visibility timeouts (record locks) of a few seconds
    "group.share.min.record.lock.duration.ms": "1000",
    # internal topics: one partition each, so the first join or transaction is quick
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    # a transaction left open by a killed producer is aborted 1 s after it timed out, not 10 s
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
    "share.coordinator.state.topic.num.partitions": "1",
    # A killed node that restarts cannot register again until the controller has timed out
    # its previous incarnation's session (9 s by default), so every restart took 13 s.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    # the cleaner allocates 128 MB at start by default
    "log.cleaner.dedupe.buffer.size": "16777216",
    "num.io.threads": "4",
    "num.network.threads": "2",
}


def _replication(nodes: int) -> dict[str, str]:
    rf, isr = str(nodes), ("2" if nodes >= 3 else "1")
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
    }


@dataclass
class KafkaCluster:
    """Kafka nodes on loopback: one (replication factor 1) or three (RF 3, min ISR 2)."""

    nodes: list[KafkaNode]
    root: Path
    java: str
    owns_root: bool = False
    started_in: float = 0.0
    _closed: bool = field(default=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def secure_bootstrap(self) -> str:
        """The SASL_SSL listeners (``start(secure=...)``)."""
        return ",".join(f"127.0.0.1:{n.secure_port}" for n in self.nodes if n.secure_port)

    @classmethod
    def start(
        cls,
        nodes: int = 1,
        *,
        version: str = DEFAULT_VERSION,
        root: Path | None = None,
        settings: dict[str, str] | None = None,
        secure: SaslSsl | None = None,
        timeout: float = 90,
        jvm_options: Sequence[str] = (),
    ) -> KafkaCluster:
        """Resolve, format and start ``nodes`` nodes; raise :class:`KafkaLaunchError` on failure.

        ``jvm_options`` follow the defaults (``JVM_OPTS``) on each node's command line, also
        when it restarts; tests pass ``QUICK_JIT``.

        The ports are free when chosen but only taken when the JVMs bind them, seconds later:
        on a busy machine (tests in parallel) another process can take one first. A node
        that then cannot bind is started again on fresh ports, twice at most. A cluster that
        does not answer within ``timeout`` is started afresh once: a three-node start that
        takes seconds when idle has outlasted 90 s on CI's shared two cores.
        """
        slow = False
        for attempt in range(3):
            try:
                return cls._start_once(
                    nodes, version, root, settings, secure, timeout, tuple(jvm_options)
                )
            except KafkaLaunchError as exc:
                retry = root is None and attempt < 2
                if retry and _port_taken(str(exc)):
                    continue
                if retry and not slow and "did not answer" in str(exc):
                    slow = True
                    continue
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _start_once(
        cls,
        nodes: int,
        version: str,
        root: Path | None,
        settings: dict[str, str] | None,
        secure: SaslSsl | None,
        timeout: float,
        jvm_options: tuple[str, ...],
    ) -> KafkaCluster:
        started = time.monotonic()
        java = _java()
        jars = resolve_jars(version)
        owns = root is None
        base = Path(tempfile.mkdtemp(prefix="streamq-kafka-")) if root is None else root
        made = [
            KafkaNode(i + 1, free_port(), free_port(), base / f"node-{i + 1}", jars,
                      secure_port=free_port() if secure is not None else None,
                      jvm_options=jvm_options)
            for i in range(nodes)
        ]  # fmt: skip
        cluster = cls(made, base, java, owns_root=owns)
        overrides = dict(settings or {})
        if secure is not None:
            overrides = {
                "listener.security.protocol.map": BASE_SETTINGS["listener.security.protocol.map"]
                + ",SASL_SSL:SASL_SSL",
                **secure.settings(),
                **overrides,
            }
        try:
            cluster._format(overrides)
            for node in made:
                node.launch(java)
            cluster.wait_ready(timeout)
        except BaseException:
            cluster.close()
            raise
        cluster.started_in = time.monotonic() - started
        return cluster

    def _format(self, overrides: dict[str, str]) -> None:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = _random_uuid()
        formats = []
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            props = {
                **BASE_SETTINGS,
                **_replication(len(self.nodes)),
                "node.id": str(node.node_id),
                "controller.quorum.voters": voters,
                "listeners": node.listeners(),
                "advertised.listeners": node.listeners(),
                "log.dirs": str(node.log_dir),
                **{k: node.own_ports(v) for k, v in overrides.items()},
            }
            text = "".join(f"{k}={v}\n" for k, v in props.items())
            (node.dir / "server.properties").write_text(text)
            (node.dir / "log4j2.properties").write_text(LOG4J2.format(log=node.server_log))
            formats.append(
                subprocess.Popen(
                    [self.java, "-Xmx256m", *QUICK_JIT, "-cp", f"{node.jars}/*",
                     "kafka.tools.StorageTool", "format", "-t", cluster_id,
                     "-c", str(node.dir / "server.properties"), "--ignore-formatted"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
            )  # fmt: skip
        for proc in formats:  # in parallel: each is a JVM start
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                lines = [ln for ln in out.splitlines() if ln.strip()]
                raise KafkaLaunchError(f"formatting the KRaft log dir failed: {lines[-1:]}")

    def wait_ready(self, timeout: float = 90) -> None:
        """Until every live node is unfenced and answers metadata with all brokers listed."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        expected = {n.node_id for n in self.nodes if n.alive()}
        for node in self.nodes:
            while node.alive() and not _accepts(node.port):
                if time.monotonic() > deadline:
                    raise KafkaLaunchError(f"Kafka node {node.node_id} did not open its port")
                time.sleep(0.1)
            if (exited := node.exited_at_start()) is not None:
                raise exited
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        listed: set[int] = set()
        while True:
            with contextlib.suppress(Exception):  # not up yet
                listed = set(admin.list_topics(timeout=5).brokers)
                if listed >= expected:
                    return
            # A node can die after "its" port answers: another process may hold that port
            # (the node then fails to bind and exits), and waiting on it would only time out.
            for node in self.nodes:
                if node.node_id in expected and (exited := node.exited_at_start()) is not None:
                    raise exited
            if time.monotonic() > deadline:
                missing = sorted(expected - listed)
                why = "; ".join(f"node {i}: {self.node(i).last_complaint()}" for i in missing)
                raise KafkaLaunchError(
                    f"Kafka at {self.bootstrap} did not answer in {timeout:.0f} s"
                    f" (brokers listed: {sorted(listed)}; {why or 'none missing'})"
                )
            time.sleep(0.2)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def restart(self, node: KafkaNode | None = None, timeout: float = 90) -> None:
        """Start a killed node again on its existing log dir (topics, offsets, groups kept)."""
        for n in [node] if node is not None else self.nodes:
            if not n.alive():
                n.launch(self.java)
        self.wait_ready(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            node.kill()
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _port_taken(why: str) -> bool:
    """Whether a node's start failed on a port another process took first."""
    return any(s in why for s in ("Unable to start acceptor", "Address already in use",
                                  "BindException"))  # fmt: skip


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m streamq.testing.kafka",
        description="Start Apache Kafka on loopback until Ctrl-C, e.g. for "
        "STREAMQ_KAFKA_BOOTSTRAP=... make test-integration",
    )
    parser.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--resolve-only", action="store_true", help="only fetch the jars")
    args = parser.parse_args(argv)
    try:
        if args.resolve_only:
            print(resolve_jars(args.version))
            return 0
        cluster = KafkaCluster.start(args.nodes, version=args.version)
    except KafkaLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(cluster.bootstrap, flush=True)
    print(f"started in {cluster.started_in:.1f}s; logs in {cluster.root}", file=sys.stderr)
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # after the JVMs started: not inherited
    try:
        signal.sigwait(stop)  # a blocked signal waits here instead of killing us uncleaned
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
