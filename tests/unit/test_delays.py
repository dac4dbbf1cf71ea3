"""Delayed records (issue 19) on memory://: envelopes, the mover driven by hand, an app.

Envelopes (``streamq.delays``) are checked as a producer writes them and as ``unwrap`` reads
them back. Each ``DelayMover`` is driven the way ``test_schedules.py`` drives a Scheduler:
the test joins it, polls its consumer itself (choosing how many records one poll returns, so
it decides where a batch ends) and calls ``step()`` with a fake clock, so a record falls due
when the test moves the clock, never by sleeping. The last tests run real workers, under
both guarantees. Every test has its own ``memory://`` log and its own delay topic.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

import streamq
from streamq import Message, Out, Producer, TopicPartition
from streamq.brokers.base import RecordMetadata
from streamq.brokers.memory import MemoryBroker, MemoryConsumer, MemoryProducer, read_log
from streamq.delays import BARRIER, DUE, KEY, PARTITION, TARGET, due_ms, ensure_delay_topic, unwrap
from streamq.errors import CommitFailed, ConfigError, MemberFenced
from streamq.message import Headers
from streamq.murmur2 import partition_for_key
from streamq.offsets import OffsetTracker
from streamq.pipeline import Output, outputs_of
from streamq.runtime import delays as mover_module
from streamq.runtime.delays import DelayMover
from streamq.runtime.outbox import Outbox
from streamq.settings import Settings, load_settings
from streamq.stats import Stats

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms: the fake clock's start
SECOND = 1000  # ms


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000


# -- the delay topic of one test ---------------------------------------------------------------


@dataclass
class Delays:
    """One test's log and delay topic, and what a test reads of them."""

    url: str
    settings: Settings
    broker: MemoryBroker

    @property
    def topic(self) -> str:
        return self.settings.delay_topic

    def tp(self, partition: int = 0) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def producer(self) -> Producer:
        return Producer(
            self.url, delay_topic=self.topic, delay_partitions=self.settings.delay_partitions
        )

    def send(self, target: str, value: bytes, due: int, **kwargs: object) -> None:
        """One delayed record, due at ``due`` (ms since the epoch)."""
        with self.producer() as p:
            p.send(target, value, deliver_at=at(due), **kwargs)  # type: ignore[arg-type]

    def raw(self, value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
        """A record appended to the delay topic as it is, envelope or not; its offset."""
        return self.broker.producer().send(self.topic, value, key, headers, 0).result().offset

    def records(self, topic: str) -> list[Message]:
        if topic not in self.broker.log.topics:
            return []
        return list(read_log(self.url, topic))

    def values(self, topic: str) -> list[bytes | None]:
        return [m.value for m in self.records(topic)]

    def committed(self, partition: int = 0) -> int | None:
        return self.broker.log.group(self.topic).committed.get(self.tp(partition))

    def evict(self, member: Member) -> None:
        """What the group does to a member that stopped polling for a session: it is out,
        and its partitions are nobody's until the next member syncs."""
        log = self.broker.log
        with log.cond:
            g = log.group(self.topic)
            consumer = member.consumer
            assert isinstance(consumer, MemoryConsumer)
            for tp in [tp for tp, owner in g.owner.items() if owner == consumer._id]:
                del g.owner[tp]
            del g.members[consumer._id], g.last_seen[consumer._id]
            g.generation += 1


def make_delays(partitions: int = 1, *, create: bool = True) -> Delays:
    url = f"memory://{unique('delays')}?partitions=1"  # targets keep one order to check
    settings = load_settings(broker=url, delay_topic=unique("delays"), delay_partitions=partitions)
    broker = MemoryBroker(url)
    if create:  # before a member subscribes, which would create it with the log's default
        ensure_delay_topic(broker, settings)
    return Delays(url, settings, broker)


@pytest.fixture
def delays() -> Delays:
    return make_delays()


@pytest.fixture
def clock() -> Clock:
    return Clock(T)


class Member:
    """One worker's part of the delay topic: its mover and the consumer it joined with."""

    def __init__(self, delays: Delays, clock: Clock, producer: object = None) -> None:
        self.stats = Stats()
        self.mover = DelayMover(
            delays.broker,
            producer or delays.broker.producer(),  # type: ignore[arg-type]
            delays.settings,
            self.stats,
            clock=clock,
        )
        self.consumer = self.mover.join()
        assert self.consumer is self.mover._consumer

    def turn(self, max_records: int = 500) -> list[Message]:
        """One turn of the mover's loop: how long to wait (which drops what it no longer
        holds from the top of its queue), poll (which follows the group), then step."""
        self.mover._wait()
        records = self.consumer.poll_batch(max_records, 0)
        self.mover.step(records)
        return records

    @property
    def owns(self) -> bool:
        return bool(self.mover._parts)

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def members(delays: Delays, clock: Clock) -> Iterator[Callable[..., Member]]:
    started: list[Member] = []

    def join(producer: object = None) -> Member:
        started.append(Member(delays, clock, producer))
        return started[-1]

    yield join
    for m in started:
        m.close()


# -- due_ms: when a delayed record is due -------------------------------------------------------


def test_a_delay_in_seconds_is_due_that_long_after_now() -> None:
    before = time.time()
    due = due_ms(1.5, None, b"v")
    after = time.time()
    assert round((before + 1.5) * 1000) <= due <= round((after + 1.5) * 1000)
    assert due_ms(0, None, b"v") <= round(time.time() * 1000)  # zero: due at once


def test_a_timedelta_delay_is_its_seconds() -> None:
    before = time.time()
    due = due_ms(timedelta(minutes=2, milliseconds=250), None, b"")  # b"": a value, no tombstone
    after = time.time()
    assert round((before + 120.25) * 1000) <= due <= round((after + 120.25) * 1000)


def test_an_aware_deliver_at_is_that_instant_in_any_zone() -> None:
    assert due_ms(None, datetime(2026, 1, 1, tzinfo=UTC), b"v") == T
    plus_one = timezone(timedelta(hours=1))
    assert due_ms(None, datetime(2026, 1, 1, 1, 0, tzinfo=plus_one), b"v") == T
    assert due_ms(None, at(T + 1234), b"v") == T + 1234  # milliseconds kept
    assert due_ms(None, at(T - 60 * SECOND), b"v") == T - 60 * SECOND  # the past: due at once


@pytest.fixture
def new_york_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_deliver_at_is_local_time(new_york_local_time: None) -> None:
    five_hours = 5 * 3600 * SECOND  # New York is UTC-5 in January
    assert due_ms(None, datetime(2026, 1, 1), b"v") == T + five_hours


@pytest.mark.parametrize(
    ("delay", "deliver_at", "value", "fragment"),
    [
        (1.0, at(T), b"v", "not both"),
        (timedelta(0), at(T), b"v", "not both"),
        (-0.001, None, b"v", "seconds >= 0"),
        (timedelta(seconds=-1), None, b"v", "seconds >= 0"),
        (True, None, b"v", "got True"),
        (False, None, b"v", "got False"),
        ("5", None, b"v", "got '5'"),
        (None, T / 1000, b"v", "must be a datetime, got float"),
        (None, "2026-01-01", b"v", "must be a datetime, got str"),
        (1.0, None, None, "tombstone"),
        (None, at(T), None, "tombstone"),
    ],
    ids=[
        "both",
        "both-zero",
        "negative",
        "negative-timedelta",
        "true",
        "false",
        "str",
        "deliver-at-float",
        "deliver-at-str",
        "tombstone-delay",
        "tombstone-deliver-at",
    ],
)
def test_a_bad_delay_is_a_config_error_that_says_why(
    delay: object, deliver_at: object, value: bytes | None, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        due_ms(delay, deliver_at, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_delay_that_is_no_finite_time_is_a_config_error(delay: float) -> None:
    """NaN and infinity both pass ``delay < 0``; neither is a time to wait."""
    with pytest.raises(ConfigError, match="delay"):
        due_ms(delay, None, b"v")


def test_out_delay_is_checked_in_the_handlers_call() -> None:
    before = time.time()
    [out] = outputs_of(Out("later", {"a": 1}, delay=timedelta(seconds=2)), b"k")
    after = time.time()
    assert (out.topic, out.value, out.key, out.partition) == ("later", b'{"a":1}', b"k", None)
    assert out.due is not None
    assert round((before + 2) * 1000) <= out.due <= round((after + 2) * 1000)
    for bad in (-1, True, "2"):
        with pytest.raises(ConfigError, match="delay"):
            outputs_of(Out("later", b"v", delay=bad), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tombstone"):
        outputs_of(Out("later", None, delay=1), None)


# -- envelopes ----------------------------------------------------------------------------------


HEADERS = [("h", b"1"), ("x", b""), ("h", b"2"), ("h", b"1")]  # duplicates, in this order


def test_a_delayed_send_waits_in_the_delay_topic_as_an_envelope() -> None:
    d = make_delays(partitions=3)
    with d.producer() as p:
        meta = p.send("orders", b"\x00raw", key="k1", headers=HEADERS, deliver_at=at(T))
    assert meta.result().topic == d.topic  # the future names where it waits
    assert d.broker.admin().list_topics()[d.topic] == 3  # created with delay_partitions
    assert "orders" not in d.broker.log.topics  # the target sees nothing yet
    [env] = d.records(d.topic)
    assert env.value == b"\x00raw"
    assert env.key != b"k1" and len(env.key or b"") == 24  # a fresh id: 12 random bytes, hex
    assert env.raw_headers is not None
    assert env.raw_headers[: len(HEADERS)] == HEADERS  # the record's own, unchanged
    assert env.raw_headers[len(HEADERS) :] == [
        (TARGET, b"orders"),
        (DUE, str(T).encode()),
        (KEY, b"k1"),
    ]

    found = unwrap(env)
    assert found == (Output("orders", b"\x00raw", b"k1", HEADERS, None), T)


def test_unwrap_gives_back_the_record_exactly() -> None:
    d = make_delays()
    before = time.time()
    with d.producer() as p:
        p.send("t", {"n": 1}, key=7, headers=HEADERS, partition=2, delay=60)
        after = time.time()
        p.send("t", b"no key", deliver_at=at(T))
        p.send("t", b"empty key", key=b"", headers={"a": "b"}, deliver_at=at(T))
    first, second, third = d.records(d.topic)
    assert first.raw_headers is not None and (PARTITION, b"2") in first.raw_headers
    out, due = unwrap(first)  # type: ignore[misc]
    assert out == Output("t", b'{"n":1}', b"7", HEADERS, 2)
    assert round((before + 60) * 1000) <= due <= round((after + 60) * 1000)
    assert second.raw_headers is not None and KEY not in dict(second.raw_headers)
    assert unwrap(second) == (Output("t", b"no key", None, None, None), T)
    assert unwrap(third) == (Output("t", b"empty key", b"", [("a", b"b")], None), T)
    assert unwrap(Message("t", 0, 0, b"k", b"v", [("h", b"1")])) is None  # no envelope


def test_a_bad_delayed_send_writes_nothing(delays: Delays) -> None:
    with delays.producer() as p:
        for kwargs in ({"delay": -1}, {"delay": 1, "deliver_at": at(T)}, {"delay": True}):
            with pytest.raises(ConfigError):
                p.send("t", b"v", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="tombstone"):
            p.send("t", None, delay=1)
    assert delays.records(delays.topic) == []
    assert "t" not in delays.broker.log.topics


def test_the_outbox_sends_a_delayed_output_to_the_delay_topic() -> None:
    d = make_delays(partitions=2, create=False)  # the outbox creates it, at its first use
    tracker = OffsetTracker()
    tp = TopicPartition("orders", 0)
    epoch = tracker.assign(tp)
    box = Outbox(
        "g",
        d.broker.producer(),
        tracker,
        exactly_once=False,
        delay_topic=d.topic,
        ensure_delay_topic=functools.partial(ensure_delay_topic, d.broker, d.settings),
    )
    now = Output("now", b"1", b"k", None)
    later = Output("later", b"2", b"k", [("h", b"v")], None, T)
    assert d.topic not in d.broker.log.topics
    box._put(tp, epoch, 0, [now, later])
    assert d.broker.admin().list_topics()[d.topic] == 2
    assert d.values("now") == [b"1"] and "later" not in d.broker.log.topics
    [env] = d.records(d.topic)
    assert unwrap(env) == (Output("later", b"2", b"k", [("h", b"v")], None), T)


# -- the mover, driven by hand ------------------------------------------------------------------


def barriers(d: Delays) -> list[int]:
    """Offsets of the barriers in the delay topic's partition 0."""
    return [
        m.offset
        for m in d.records(d.topic)
        if m.partition == 0 and m.raw_headers and BARRIER in dict(m.raw_headers)
    ]


def test_nothing_moves_before_the_barrier_the_member_appended_is_read_back(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    for i in range(3):
        delays.send("target", f"r{i}".encode(), T - SECOND)  # due already
    m = members()
    m.turn(max_records=2)  # joins: the barrier goes in at offset 3; two records are read
    assert barriers(delays) == [3]
    m.turn(max_records=1)
    assert delays.records("target") == [] and m.mover.moved == 0  # due, but not yet moved
    m.turn(max_records=1)  # the barrier itself
    assert delays.values("target") == [b"r0", b"r1", b"r2"]
    for _ in range(3):
        m.turn()
    assert delays.values("target") == [b"r0", b"r1", b"r2"]  # once
    assert m.stats.delayed["moved"] == 3


def test_a_record_moves_when_due_not_before_once_with_its_own_key_value_and_headers(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    delays.broker.admin().create_topic("target", 4)
    assert partition_for_key(b"c", 4) == 2  # so partition=1 below is not where "c" would go
    delays.send("target", b"keyed", T + 10 * SECOND, key="c", headers=HEADERS)
    delays.send("target", b"placed", T + 10 * SECOND, key="c", partition=1)
    m = members()
    m.turn()
    assert m.owns
    clock.now_ms = T + 10 * SECOND - 1
    m.turn()
    assert delays.records("target") == []
    clock.now_ms = T + 10 * SECOND
    m.turn()
    for _ in range(3):
        clock.now_ms += 60 * SECOND
        m.turn()
    moved = {r.value: r for r in delays.records("target")}
    assert len(delays.records("target")) == 2 and set(moved) == {b"keyed", b"placed"}
    keyed, placed = moved[b"keyed"], moved[b"placed"]
    assert (keyed.partition, keyed.key, keyed.raw_headers) == (2, b"c", HEADERS)
    assert (placed.partition, placed.key, placed.raw_headers) == (1, b"c", None)
    assert m.mover.moved == 2


def test_the_committed_position_never_passes_a_held_record_while_later_ones_move_first(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    delays.send("target", b"a", T + 30 * SECOND)  # offset 0: due last
    delays.send("target", b"b", T + 10 * SECOND)  # offset 1
    delays.send("target", b"c", T + 20 * SECOND)  # offset 2
    m = members()
    m.turn()  # the barrier (offset 3) is read back; its tombstone commits the position
    assert delays.committed() == 0
    for seconds, moved in ((10, [b"b"]), (20, [b"b", b"c"])):
        clock.now_ms = T + seconds * SECOND
        m.turn()
        assert delays.values("target") == moved  # out of log order
        assert delays.committed() == 0  # "a", at offset 0, is still held
    clock.now_ms = T + 30 * SECOND
    m.turn()
    assert delays.values("target") == [b"b", b"c", b"a"]
    position = m.mover._parts[delays.tp()].position
    assert delays.committed() == position > 3  # nothing held: past everything read


def test_a_member_taking_over_moves_what_its_predecessor_had_not_and_nothing_again(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    delays.send("target", b"a", T + 30 * SECOND)
    delays.send("target", b"b", T + 10 * SECOND)
    delays.send("target", b"c", T + 20 * SECOND)
    first = members()
    first.turn()
    heir = members()
    assert heir.turn() == [] and not heir.owns  # one partition: the first member keeps it
    clock.now_ms = T + 10 * SECOND
    first.turn()
    heir.turn()
    assert delays.values("target") == [b"b"]
    first.close()

    read = heir.turn()
    assert heir.owns
    assert b"b" in [r.value for r in read]  # it read "b" again: only its tombstone says moved
    for _ in range(3):
        heir.turn()
    assert delays.values("target") == [b"b"]
    clock.now_ms = T + 30 * SECOND
    heir.turn()
    heir.turn()
    assert Counter(delays.values("target")) == {b"a": 1, b"b": 1, b"c": 1}
    assert delays.values("target")[0] == b"b"
    assert (first.mover.moved, heir.mover.moved) == (1, 2)


def test_a_malformed_record_in_the_delay_topic_is_counted_skipped_and_cleaned(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    bad = [
        (b"junk", b"no-headers", None),
        (b"junk", b"no-due", [(TARGET, b"target")]),
        (b"junk", b"no-target", [(DUE, str(T).encode())]),
        (b"junk", b"bad-due", [(TARGET, b"target"), (DUE, b"soon")]),
        (b"junk", b"bad-target", [(TARGET, b"\xff"), (DUE, str(T).encode())]),
        (b"junk", b"bad-part", [(TARGET, b"target"), (DUE, str(T).encode()), (PARTITION, b"x")]),
    ]
    for value, key, headers in bad:
        delays.raw(value, key, headers)
    delays.send("target", b"good", T)
    m = members()
    m.turn()  # does not raise
    assert m.stats.delayed["malformed"] == len(bad)
    assert delays.values("target") == [b"good"]
    tombstones = {r.key for r in delays.records(delays.topic) if r.value is None}
    assert {key for _, key, _ in bad} <= tombstones  # compaction will clean them up
    delays.send("target", b"after", T)
    m.turn()
    m.turn()
    assert delays.values("target") == [b"good", b"after"]
    assert m.stats.delayed["malformed"] == len(bad)  # each counted once


def test_a_refused_commit_moves_nothing_and_the_records_move_at_the_next_step(
    delays: Delays, clock: Clock, members: Callable[..., Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    delays.send("target", b"a", T + SECOND)
    delays.send("target", b"b", T + SECOND)
    m = members()
    m.turn()
    commit = m.consumer.commit_transaction
    refused: list[int] = []

    def refuses_once(offsets: dict[TopicPartition, int], outputs: list[Output]) -> None:
        if not refused:
            refused.append(len(outputs))
            raise CommitFailed("coordinator moved")
        commit(offsets, outputs)

    monkeypatch.setattr(m.consumer, "commit_transaction", refuses_once)
    clock.now_ms = T + SECOND
    m.turn()
    assert refused == [4]  # the fault happened, on the move of both (+ their tombstones)
    assert delays.records("target") == [] and m.mover.moved == 0
    assert delays.committed() == 0
    for _ in range(3):
        m.turn()
    assert sorted(delays.values("target")) == [b"a", b"b"]  # each once
    assert m.mover.moved == 2 and delays.committed() >= 2  # past "a" and "b"


def test_an_evicted_member_moves_nothing_and_its_heir_moves_everything_once(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    """A frozen member was evicted; it wakes up and steps without polling first."""
    delays.send("target", b"a", T + SECOND)
    delays.send("target", b"b", T + 2 * SECOND)
    frozen = members()
    frozen.turn()
    delays.evict(frozen)
    heir = members()
    heir.turn()
    assert heir.owns  # the fault happened: the partition moved on
    clock.now_ms = T + 2 * SECOND
    frozen.mover.step([])  # its move is refused
    assert delays.records("target") == [] and frozen.mover.moved == 0
    heir.turn()
    frozen.turn()  # finds its partition lost, rejoins, owns nothing
    heir.turn()
    frozen.turn()
    assert sorted(delays.values("target")) == [b"a", b"b"]
    assert (frozen.mover.moved, heir.mover.moved) == (0, 2)


def test_a_member_that_gets_its_partition_back_does_not_move_again_what_another_moved(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    """The first member lost the partition while it held two records; meanwhile another
    member moved one of them, and left. When the partition comes back to the first member it
    reads both again from the committed position, and must wait for its new barrier (behind
    the moved record's tombstone) before moving anything."""
    delays.send("target", b"s", T + 20 * SECOND)  # offset 0: held, keeps the position at 0
    delays.send("target", b"r", T + 10 * SECOND)  # offset 1
    first = members()
    first.turn()  # holds both, due at T+10s and T+20s
    delays.evict(first)
    other = members()
    other.turn()
    clock.now_ms = T + 10 * SECOND
    other.turn()
    assert delays.values("target") == [b"r"]
    assert delays.committed() == 0  # "s" still held: whoever comes next reads "r" again
    other.close()

    read = first.turn(max_records=2)  # lost, rejoined, given the partition again
    assert first.owns
    assert [r.value for r in read] == [b"s", b"r"]  # not yet the tombstone of "r"
    for _ in range(3):
        first.turn()
    assert delays.values("target") == [b"r"]  # "r" once


def test_a_fenced_member_stops_moving_so_that_it_joins_again(
    delays: Delays, clock: Clock, members: Callable[..., Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MemberFenced`` must leave ``step`` (the mover's loop then rejoins as a new member)."""
    delays.send("target", b"a", T)
    m = members()

    def fenced(offsets: dict[TopicPartition, int], outputs: list[Output]) -> None:
        raise MemberFenced("another member with this instance id joined")

    monkeypatch.setattr(m.consumer, "commit_transaction", fenced)
    with pytest.raises(MemberFenced):
        m.turn()
    assert delays.records("target") == []


def test_a_delayed_record_for_a_missing_partition_does_not_stop_or_repeat_the_others(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    """``partition=9`` of a one-partition topic is accepted at send time (an envelope has no
    target yet); moving it later must not block every other due record, nor publish them
    again and again."""
    delays.send("target", b"good", T)
    with delays.producer() as p:
        p.send("target", b"nowhere", partition=9, deliver_at=at(T))
    m = members()
    for _ in range(4):
        m.turn()
    assert delays.values("target") == [b"good"]
    delays.send("target", b"after", T)
    for _ in range(3):
        m.turn()
    assert delays.values("target") == [b"good", b"after"]


def test_at_most_max_move_records_move_per_transaction(
    delays: Delays, clock: Clock, members: Callable[..., Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mover_module, "MAX_MOVE", 2)
    for i in range(5):
        delays.send("target", f"r{i}".encode(), T - 5 * SECOND + i)
    m = members()
    moved = []
    for _ in range(4):
        m.turn()
        moved.append(len(delays.records("target")))
    assert moved == [2, 4, 5, 5]
    assert delays.values("target") == [b"r0", b"r1", b"r2", b"r3", b"r4"]  # by due time


def test_a_member_holding_max_held_records_pauses_the_partition_until_some_moved(
    delays: Delays, clock: Clock, members: Callable[..., Member], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mover_module, "MAX_HELD", 4)
    for i in range(4):
        delays.send("target", f"far{i}".encode(), T + 60 * SECOND)
    m = members()
    m.turn()
    assert len(m.mover._parts[delays.tp()].held) == 4
    delays.send("target", b"soon", T + SECOND)  # behind the held ones
    clock.now_ms = T + 2 * SECOND
    assert m.turn() == []  # paused: "soon" waits although it is due
    assert delays.records("target") == []
    clock.now_ms = T + 60 * SECOND
    m.turn()  # the four move: the partition resumes
    m.turn()
    assert delays.values("target") == [b"far0", b"far1", b"far2", b"far3", b"soon"]


class FailsFirstSend:
    """A producer whose first record (the barrier) is refused."""

    def __init__(self, inner: MemoryProducer) -> None:
        self.inner = inner
        self.failed = 0

    def send(self, *args: object, **kwargs: object) -> Future[RecordMetadata]:
        if not self.failed:
            self.failed += 1
            fut: Future[RecordMetadata] = Future()
            fut.set_exception(CommitFailed("not leader for partition"))
            return fut
        return self.inner.send(*args, **kwargs)  # type: ignore[arg-type]


def test_a_barrier_that_was_not_written_is_sent_again_and_nothing_moves_before_it(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    delays.send("target", b"a", T)
    producer = FailsFirstSend(delays.broker.producer())
    m = members(producer)
    m.turn()
    assert producer.failed == 1 and barriers(delays) == [1]  # the second try went in
    assert delays.records("target") == []
    m.turn()
    m.turn()
    assert delays.values("target") == [b"a"]


# -- end to end: a worker's handler delays its output ------------------------------------------


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_an_apps_delayed_outputs_arrive_once_and_never_before_due(guarantee: str) -> None:
    url = f"memory://{unique('delays')}"
    app = streamq.App(
        "svc",
        broker=url,
        delay_topic=unique("delays"),
        guarantee=guarantee,
        poll_timeout=0.02,
        commit_interval=0.05,
    )
    arrived: list[tuple[int, float, bytes | None, Headers | None]] = []

    @app.handler("orders")
    def delay(order: dict) -> Out:
        return Out("later", order, headers=[("id", str(order["id"]))], delay=0.3)

    @app.handler("later")
    def land(order: dict, msg: Message) -> None:
        arrived.append((order["id"], time.time() * 1000, msg.key, msg.raw_headers))

    with Producer(url) as p:
        for i in range(20):
            p.send("orders", {"id": i}, key=str(i))
    app.run(until_idle=1.0)

    assert Counter(i for i, _, _, _ in arrived) == dict.fromkeys(range(20), 1)
    envelopes = [m for m in read_log(url, app.settings.delay_topic) if m.value is not None]
    envelopes = [m for m in envelopes if TARGET in dict(m.raw_headers or ())]
    due = {}
    for env in envelopes:
        found = unwrap(env)
        assert found is not None
        out, due_at = found
        due[int(out.headers[0][1])] = due_at  # type: ignore[index]
    assert sorted(due) == list(range(20))  # one envelope per output
    for i, arrival, key, headers in arrived:
        assert arrival >= due[i], f"{i} arrived {due[i] - arrival:.0f} ms before it was due"
        assert key == str(i).encode() and headers == [("id", str(i).encode())]
    for msg in read_log(url, "later"):
        assert msg.timestamp >= due[int(msg.key or b"")]
    assert app.stats.delayed["moved"] == 20


def test_a_member_given_its_partition_back_moves_what_it_still_held_once(
    delays: Delays, clock: Clock, members: Callable[..., Member]
) -> None:
    """The member is evicted while it holds a record due later, and at its next poll is
    given the partition back: it reads the record again and holds it again, and moves it
    once when due (its entry from before the loss must not move it a second time)."""
    delays.send("target", b"s", T + 20 * SECOND)
    m = members()
    m.turn()
    assert m.mover._parts[delays.tp()].held  # it holds "s"
    delays.evict(m)
    m.turn()  # lost, rejoined, given the partition back: "s" and the new barrier read
    assert m.owns and len(barriers(delays)) == 2  # the fault happened: a second assignment
    clock.now_ms = T + 20 * SECOND
    for _ in range(3):
        m.turn()
    assert delays.values("target") == [b"s"]
