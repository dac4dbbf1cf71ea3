"""The memory broker keeps the Backend contract, so users' handler tests mean something."""

from __future__ import annotations

import threading
import time

import pytest

from streamq import CommitFailed, ConfigError, Producer, TopicPartition
from streamq.brokers import connect
from streamq.brokers.memory import MemoryConsumer, get_log, parse_url
from streamq.errors import UnknownTopicOrPartition
from streamq.murmur2 import partition_for_key
from streamq.settings import load_settings


class Member:
    """A consumer plus the callbacks it received."""

    def __init__(self, url: str, group: str = "g", topics=("t",), reset: str = "earliest"):
        self.consumer: MemoryConsumer = connect(url).consumer(
            group, load_settings(broker=url, auto_offset_reset=reset)
        )
        self.assigned: set[TopicPartition] = set()
        self.events: list[tuple[str, list[TopicPartition]]] = []
        self.consumer.subscribe(list(topics), self._assign, self._revoke, self._lost)

    def _assign(self, tps):
        self.assigned.update(tps)
        self.events.append(("assign", sorted(tps)))

    def _revoke(self, tps):
        self.assigned.difference_update(tps)
        self.events.append(("revoke", sorted(tps)))

    def _lost(self, tps):
        self.assigned.difference_update(tps)
        self.events.append(("lost", sorted(tps)))

    def drain(self, rounds: int = 3, timeout: float = 0.01):
        out = []
        for _ in range(rounds):
            out += self.consumer.poll_batch(1000, timeout)
        return out


def test_keyed_records_use_kafkas_partitioner(memory_url: str) -> None:
    with Producer(memory_url) as p:
        for i in range(50):
            meta = p.send("t", {"i": i}, key=f"k{i}").result()
            assert meta.partition == partition_for_key(f"k{i}".encode(), 4)


def test_partitions_option_and_explicit_partition(memory_url: str) -> None:
    url = memory_url + "?partitions=3"
    with Producer(url) as p:
        assert p.send("t", b"x", partition=2).result().partition == 2
        with pytest.raises(UnknownTopicOrPartition):
            p.send("t", b"x", partition=3)
    assert connect(url).admin().list_topics() == {"t": 3}
    with pytest.raises(ConfigError, match="partitions must be a positive integer"):
        connect(memory_url + "?partitions=0")


def test_one_member_reads_everything_in_order(memory_url: str) -> None:
    with Producer(memory_url) as p:
        for i in range(20):
            p.send("t", str(i), key=str(i % 3))
    m = Member(memory_url)
    got = m.drain()
    assert len(got) == 20
    for tp in m.assigned:
        offsets = [x.offset for x in got if x.tp == tp]
        assert offsets == list(range(len(offsets)))
    assert m.consumer.settled


def test_group_resumes_from_commit_and_reset_policies(memory_url: str) -> None:
    with Producer(memory_url) as p:
        for i in range(8):
            p.send("t", str(i), partition=0)
    m = Member(memory_url)
    m.drain()
    m.consumer.commit({TopicPartition("t", 0): 5}, sync=True)
    m.consumer.close()
    again = Member(memory_url)
    assert [x.offset for x in again.drain() if x.partition == 0] == [5, 6, 7]
    late = Member(memory_url, group="other", reset="latest")
    assert late.drain() == []


def test_two_members_split_partitions_and_revoke_before_handover(memory_url: str) -> None:
    Producer(memory_url).send("t", b"x")
    a = Member(memory_url)
    a.drain()
    assert len(a.assigned) == 4
    b = Member(memory_url)
    b.drain()
    assert not b.consumer.settled and not b.assigned  # waits until a releases its half
    a.drain()  # a notices the new generation and revokes half
    b.drain()
    assert len(a.assigned) == 2 and len(b.assigned) == 2
    assert not (a.assigned & b.assigned)
    assert a.events[-1][0] == "revoke"
    assert a.consumer.settled and b.consumer.settled
    b.consumer.close()
    a.drain()
    assert len(a.assigned) == 4


def test_commit_is_fenced_to_the_owner(memory_url: str) -> None:
    a = Member(memory_url)
    a.drain()
    b = Member(memory_url)
    a.drain()
    b.drain()
    theirs = next(iter(b.assigned))
    with pytest.raises(CommitFailed, match="no longer owns"):
        a.consumer.commit({theirs: 1}, sync=True)


def test_expired_member_loses_partitions(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamq.brokers.memory as memory

    a = Member(memory_url)
    a.drain()
    monkeypatch.setattr(memory, "SESSION_TIMEOUT", 0.05)
    b = Member(memory_url)
    time.sleep(0.1)
    b.drain()  # a has not polled within the session timeout: evicted
    assert len(b.assigned) == 4
    a.drain()
    assert ("lost", sorted(a.events[0][1])) in a.events


def test_pause_resume_and_seek(memory_url: str) -> None:
    with Producer(memory_url + "?partitions=1") as p:
        for i in range(5):
            p.send("t", str(i))
    m = Member(memory_url)
    tp = TopicPartition("t", 0)
    m.consumer.poll_batch(1, 0)  # join; fetches offset 0
    m.consumer.pause([tp])
    assert m.drain() == []
    m.consumer.resume([tp])
    assert [x.offset for x in m.drain()] == [1, 2, 3, 4]
    m.consumer.seek(tp, 2)
    assert [x.offset for x in m.drain()] == [2, 3, 4]


def test_offsets_for_times(memory_url: str) -> None:
    with Producer(memory_url + "?partitions=1") as p:
        for ts in (100, 200, 300):
            p.send("t", b"x", timestamp=ts)
    m = Member(memory_url)
    tp = TopicPartition("t", 0)
    assert m.consumer.offsets_for_times("t", 150) == {tp: 1}
    assert m.consumer.offsets_for_times("t", 999) == {tp: None}
    with pytest.raises(UnknownTopicOrPartition):
        m.consumer.offsets_for_times("nope", 0)


@pytest.mark.parametrize("bad", [1.5, "100", True])
def test_a_timestamp_that_is_not_an_int_is_refused_at_send(memory_url: str, bad: object) -> None:
    """A record's timestamp is an integer on every broker (and in the compiled Message):
    the producer says so, instead of a consumer failing on the record later."""
    with Producer(memory_url) as p, pytest.raises(ConfigError, match="timestamp"):
        p.send("t", b"x", timestamp=bad)  # type: ignore[arg-type]
    assert "t" not in get_log(parse_url(memory_url)[0]).topics


def test_poll_wakes_on_produce(memory_url: str) -> None:
    m = Member(memory_url)
    m.drain(1)
    threading.Timer(0.05, lambda: Producer(memory_url).send("t", b"late")).start()
    start = time.monotonic()
    got = m.consumer.poll_batch(10, 5.0)
    assert [x.value for x in got] == [b"late"]
    assert time.monotonic() - start < 4.0  # woke on the append, not the timeout (hang guard)


def test_headers_and_tombstones_round_trip(memory_url: str) -> None:
    with Producer(memory_url + "?partitions=1") as p:
        p.send("t", None, key=b"\x00", headers=[("a", b"1"), ("a", b"\xff")])
    m = Member(memory_url)
    (msg,) = m.drain()
    assert msg.value is None and msg.key == b"\x00"
    assert msg.raw_headers == [("a", b"1"), ("a", b"\xff")]
    assert msg.headers == {"a": b"\xff"}
