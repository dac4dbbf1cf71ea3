"""The Kafka launcher says in one line why it cannot start (no broker is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamq.testing import kafka


def test_no_java_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(kafka.KafkaLaunchError, match=r"^no java on PATH: .*Java 17\+") as info:
        kafka.KafkaCluster.start(1)
    assert "\n" not in str(info.value)


def test_an_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kafka.KafkaLaunchError, match=r"is Java 11: Apache Kafka 4.x needs"):
        kafka.KafkaCluster.start(1)


def test_no_maven_and_no_cached_jars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMQ_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kafka.KafkaLaunchError, match=r"^no mvn on PATH and no cached jars"):
        kafka.resolve_jars("4.2.2")


def test_jars_that_do_not_resolve_say_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "mvn"
    fake.write_text("#!/bin/sh\necho '[ERROR] Failed to execute goal: could not resolve'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("STREAMQ_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    why = r"cannot resolve Apache Kafka 9.9.9 jars: \[ERROR\] Failed to execute goal"
    with pytest.raises(kafka.KafkaLaunchError, match=why):
        kafka.resolve_jars("9.9.9")
    assert not (tmp_path / "cache" / "kafka-9.9.9" / ".complete").exists()


def test_a_cached_resolution_needs_no_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "cache" / "kafka-4.2.2"
    (root / "jars").mkdir(parents=True)
    (root / ".complete").touch()
    monkeypatch.setenv("STREAMQ_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kafka.resolve_jars("4.2.2") == root / "jars"


def test_kafka_uuids_have_kafkas_form() -> None:
    value = kafka._random_uuid()
    assert len(value) == 22 and "=" not in value


def test_cluster_ids_never_look_like_an_option() -> None:
    """``kafka-storage format -t -xyz`` fails: a random id starting with "-" broke a start."""
    from streamq.testing.kafka import _random_uuid

    ids = [_random_uuid() for _ in range(5000)]  # about 78 would start with "-" otherwise
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def test_a_port_taken_before_the_jvm_bound_it_means_fresh_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that exits at start because another process took its port is started again
    on fresh ports (twice at most); a cluster that does not answer in time, once; any other
    failure is said at once."""
    taken = "Kafka node 1 exited at start: ERROR Unable to start acceptor for CONTROLLER"
    calls: list[int] = []

    def failing(why: str, times: int):
        def start_once(cls, *args):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) <= times:
                raise kafka.KafkaLaunchError(why)
            return "started"

        return classmethod(start_once)

    monkeypatch.setattr(kafka.KafkaCluster, "_start_once", failing(taken, 2))
    assert kafka.KafkaCluster.start(1) == "started" and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(kafka.KafkaCluster, "_start_once", failing(taken, 3))
    with pytest.raises(kafka.KafkaLaunchError, match="Unable to start acceptor"):
        kafka.KafkaCluster.start(1)
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(kafka.KafkaCluster, "_start_once", failing("did not answer", 1))
    assert kafka.KafkaCluster.start(1) == "started" and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(kafka.KafkaCluster, "_start_once", failing("did not answer", 2))
    with pytest.raises(kafka.KafkaLaunchError, match="did not answer"):
        kafka.KafkaCluster.start(1)
    assert len(calls) == 2
    calls.clear()
    monkeypatch.setattr(kafka.KafkaCluster, "_start_once", failing("formatting failed", 1))
    with pytest.raises(kafka.KafkaLaunchError, match="formatting failed"):
        kafka.KafkaCluster.start(1)
    assert len(calls) == 1


def test_a_node_that_dies_after_its_port_answers_is_said_at_once(tmp_path: Path) -> None:
    """Another process on the node's port answers for it while the node, unable to bind,
    exits: the wait says so (a port-taken failure, started again on fresh ports) instead of
    waiting out its timeout for a broker that will never be listed."""
    import socket
    import subprocess

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    node = kafka.KafkaNode(1, squatter.getsockname()[1], 0, tmp_path, tmp_path)
    (tmp_path / "stdout.log").write_text(
        "ERROR Unable to start acceptor for PLAINTEXT: java.net.BindException\n"
    )
    node.proc = subprocess.Popen(["sleep", "1"])
    cluster = kafka.KafkaCluster([node], tmp_path, "java")
    try:
        with pytest.raises(kafka.KafkaLaunchError, match="exited at start") as info:
            cluster.wait_ready(timeout=60)
    finally:
        squatter.close()
        node.proc.wait()
    assert node.proc.returncode == 0  # the fault really happened: the node was alive, then not
    assert kafka._port_taken(str(info.value))  # not "did not answer": said before the timeout
