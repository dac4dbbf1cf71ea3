"""One behavioural suite for the Backend contract, run on every broker.

``TestMemoryContract`` (tests/unit), ``TestKafkaContract`` and ``TestRedisContract``
(tests/integration) subclass ``BackendContract`` and provide ``url``. The memory broker
users test their handlers against must behave like the real ones; a gap would show here.
"""

from __future__ import annotations

import time
import uuid

import pytest

import streamq
from streamq import CommitFailed, TopicPartition
from streamq.brokers import connect
from streamq.murmur2 import partition_for_key
from streamq.settings import load_settings


class Member:
    """A Backend consumer plus the rebalance callbacks it received."""

    def __init__(self, url: str, group: str, topic: str, **settings) -> None:
        self.backend = connect(url, load_settings(broker=url, **settings)).consumer(
            group, load_settings(broker=url, **settings)
        )
        self.owned: set[TopicPartition] = set()
        self.revoked: list[TopicPartition] = []
        self.commit_in_revoke: list[BaseException | None] = []
        self.backend.subscribe([topic], self._assign, self._revoke, self._lost)

    def _assign(self, tps):
        self.owned.update(tps)

    def _revoke(self, tps):
        self.revoked += tps
        self.owned.difference_update(tps)

    def _lost(self, tps):
        self.owned.difference_update(tps)

    def poll_until(self, n: int, timeout: float = 60.0) -> list[streamq.Message]:
        got: list[streamq.Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += self.backend.poll_batch(500, 0.2)
        return got

    def poll_for(self, seconds: float) -> list[streamq.Message]:
        got: list[streamq.Message] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += self.backend.poll_batch(500, 0.1)
        return got

    def wait_owned(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.owned) < n and time.monotonic() < deadline:
            self.backend.poll_batch(1, 0.1)
        assert len(self.owned) >= n, f"owned {sorted(self.owned)}, wanted {n} partitions"

    def close(self) -> None:
        self.backend.close()


class BackendContract:
    """Subclasses provide the ``url`` fixture and optional ``settings``."""

    settings: dict = {}
    # Memory and Redis (leases) refuse a commit for a partition the member no longer owns.
    # Kafka fences by group generation only: a member still in the generation may commit any
    # partition. streamq never does, since the tracker forgets revoked partitions.
    fences_commits_per_partition = True

    @pytest.fixture
    def topic(self, url: str) -> str:
        name = f"contract-{uuid.uuid4().hex[:8]}"
        connect(url, load_settings(broker=url, **self.settings)).admin().create_topic(name, 2)
        return name

    def member(self, url: str, topic: str, group: str = "g") -> Member:
        return Member(url, f"{group}-{topic}", topic, **self.settings)

    def produce(self, url: str, topic: str, values: list[bytes], partition: int = 0) -> None:
        with streamq.Producer(url, **self.settings) as producer:
            for value in values:
                producer.send(topic, value, partition=partition, headers=[("h", b"\x00")])
            assert producer.flush(30) == 0

    def test_records_of_a_partition_come_in_log_order(self, url: str, topic: str) -> None:
        values = [str(i).encode() for i in range(50)]
        self.produce(url, topic, values)
        m = self.member(url, topic)
        got = m.poll_until(50)
        assert [x.value for x in got] == values
        offsets = [x.offset for x in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == 50
        assert all(x.raw_headers == [("h", b"\x00")] and x.partition == 0 for x in got)
        m.close()

    def test_a_group_resumes_after_the_committed_position(self, url: str, topic: str) -> None:
        self.produce(url, topic, [str(i).encode() for i in range(10)])
        m = self.member(url, topic)
        got = m.poll_until(10)
        m.backend.commit({TopicPartition(topic, 0): got[6].offset}, sync=True)
        m.close()
        again = self.member(url, topic)
        resumed = again.poll_until(4)
        assert [x.value for x in resumed] == [b"6", b"7", b"8", b"9"]
        again.close()

    def test_paused_partitions_return_nothing_until_resumed(self, url: str, topic: str) -> None:
        m = self.member(url, topic)
        m.wait_owned(2)
        tp = TopicPartition(topic, 0)
        m.backend.pause([tp])
        self.produce(url, topic, [b"a", b"b"])
        assert m.poll_for(1.5) == []
        m.backend.resume([tp])
        assert [x.value for x in m.poll_until(2)] == [b"a", b"b"]
        m.close()

    def _two_records_around_a_boundary(self, url: str, topic: str) -> tuple[Member, list, int]:
        self.produce(url, topic, [b"early"])
        time.sleep(0.05)
        boundary = int(time.time() * 1000)
        time.sleep(0.05)
        self.produce(url, topic, [b"late"])
        m = self.member(url, topic)
        return m, m.poll_until(2), boundary

    def test_offsets_for_times_finds_the_first_record_at_or_after(
        self, url: str, topic: str
    ) -> None:
        m, got, boundary = self._two_records_around_a_boundary(url, topic)
        assert (
            m.backend.offsets_for_times(topic, boundary)[TopicPartition(topic, 0)] == got[1].offset
        )
        m.close()

    def test_offsets_for_times_past_the_end_is_none(self, url: str, topic: str) -> None:
        m, _, _ = self._two_records_around_a_boundary(url, topic)
        future = int(time.time() * 1000) + 10**7
        found = m.backend.offsets_for_times(topic, future)
        assert found == {TopicPartition(topic, 0): None, TopicPartition(topic, 1): None}
        m.close()

    def test_keyed_records_use_kafkas_partitioner(self, url: str, topic: str) -> None:
        with streamq.Producer(url, **self.settings) as producer:
            metas = [producer.send(topic, b"x", key=f"k{i}").result(30) for i in range(20)]
        assert [m.partition for m in metas] == [
            partition_for_key(f"k{i}".encode(), 2) for i in range(20)
        ]

    def test_a_joining_member_gets_partitions_after_a_revoke(self, url: str, topic: str) -> None:
        first = self.member(url, topic)
        first.wait_owned(2)
        second = self.member(url, topic)
        deadline = time.monotonic() + 90
        while not second.owned and time.monotonic() < deadline:
            first.backend.poll_batch(10, 0.1)
            second.backend.poll_batch(10, 0.1)
        assert second.owned, "the second member never got a partition"
        assert first.revoked and not (first.owned & second.owned)
        if self.fences_commits_per_partition:
            moved = next(iter(second.owned))
            with pytest.raises(CommitFailed):
                first.backend.commit({moved: 1}, sync=True)  # not its partition any more
        second.close()
        first.close()
