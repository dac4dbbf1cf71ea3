"""E4, E5, E6: odd, oversize and near-limit records on real brokers.

E4 (both brokers). Records a well-behaved producer rarely sends: a null key, a binary
(non-UTF-8) key, non-UTF-8 header values, an empty header value, duplicate header names, a
64 KB header value, and a timestamp of -1. streamq's ``Producer`` expresses all of them (bytes
keys, header lists with repeats, an explicit timestamp), so it writes them; the test reads the
source topic back with ``streamq.brokers.view.read_topic`` first, to show the broker really holds
them as sent (Apache Kafka accepts a CreateTime of -1 and hands it back as -1). Some are
poison, undecodable or raising in the handler: their DLQ copies must keep the original key,
value and headers byte for byte, in order, duplicates included. The handler must see the
others' keys, headers and timestamps intact. Handled plus dead-lettered equals produced (I1),
once each, by one worker that never died.

E5 (both brokers). One 5 MB record among small ones under 1 MB in-flight byte caps (per
partition and worker-wide). It is admitted alone: while its handler is held, the worker has
it in flight (the in-flight bytes gauge) with every partition paused; then everything is
handled in order (I1, I3), the big one at its full size. Kafka's default 1 MB
``message.max.bytes`` would refuse it, so that case runs on a node of its own with 8 MB broker
and topic limits and a producer allowed 8 MB; the worker needs no fetch setting, since the
broker returns a first record batch larger than ``fetch.max.bytes`` whole (KIP-74).

E6 (Kafka). A poison of ~900 KB whose handler raises an exception with a 300 KB message, so an
untruncated DLQ copy (payload, error message, traceback) would be ~1.5 MB, past the broker's
1 MB limit. streamq cuts the message header to 2 KB and the traceback to ``traceback_limit``
(8 KB), each piece of the traceback capped first so the huge message cannot push the frames
out: the DLQ produce succeeds, the copy arrives with the truncated headers (the raise site
kept) and the payload byte for byte, and the observer shows nothing committed past the poison
until then. The second case is C9: a ~997 KB poison fits the source topic, but its DLQ copy
(payload plus ~5 KB of headers) exceeds the producer's 1,000,000-byte ``message.max.bytes``
(librdkafka's default, below the broker's 1,048,588), so the DLQ write fails every time: the
partition waits at the poison, uncommitted, retrying, for as long as the worker runs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import streamq
from streamq.brokers import connect
from streamq.brokers.view import read_topic
from streamq.settings import load_settings
from tests.conftest import Broker, free_port, own_kafka
from tests.integration.helpers import (
    AppSpec,
    Scrape,
    app_env,
    app_spec,
    read_ledger,
    start_worker,
    unique,
    wait_until,
)

from .invariants import check_run
from .observer import check_commits, observe

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

MAX_RETRIES = 1


def _app(extra: dict | None = None) -> AppSpec:
    """tests/apps/oddities.py: the ledger app, plus a side file where the handler writes what
    it saw of each record; ids that raise; one id whose handler waits for a release file."""
    return app_spec("oddities", extra=extra or {}, max_retries=MAX_RETRIES)


def _env(broker: Broker, topic: str, group: str, tmp_path: Path, **more: str) -> dict[str, str]:
    return app_env(broker.url, topic, group, tmp_path / "ledger", SEEN=str(tmp_path / "seen"),
                   RELEASE=str(tmp_path / "release"), **more)  # fmt: skip


def _seen(tmp_path: Path) -> list[dict]:
    path = tmp_path / "seen"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _read(url: str, topic: str) -> list[streamq.Message]:
    return list(read_topic(url, topic, load_settings(broker=url, broker_timeout=20)))


def _hdrs(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    return [(name, bytes(value)) for name, value in headers or ()]


# -- E4 ------------------------------------------------------------------------------------------

BIG_HEADER = bytes(range(256)) * 256  # 64 KB holding every byte value: not UTF-8

# id -> (key, headers, timestamp, poison): None, "undecodable" (not JSON) or "raises".
ODD: dict[int, tuple[bytes | None, list[tuple[str, bytes]] | None, int | None, str | None]] = {
    100: (None, None, None, None),
    101: (b"\x00\xff\xfe\x80 binary key", None, None, None),
    102: (b"k-utf8", [("h1", b"\xff\xfe"), ("h2", b"\xc3\x28"), ("empty", b"")], None, None),
    103: (b"k-dup", [("dup", b"1"), ("dup", b"\xff2"), ("other", b"x"), ("dup", b"3")], None,
          None),
    104: (b"k-big", [("big", BIG_HEADER)], None, None),
    105: (b"k-ts", None, -1, None),
    106: (b"\xc0\xc1 all at once", [("dup", b"\x80"), ("big", BIG_HEADER), ("dup", b"\x81")], -1,
          None),
    # poison
    110: (b"\xff\x00 poison key", [("dup", b"\xff"), ("dup", b"\xfe"), ("big", BIG_HEADER)], None,
          "undecodable"),
    111: (None, [("h", b"\x80\x81")], None, "undecodable"),
    112: (None, [("dup", b"a"), ("dup", b"\xff")], None, "raises"),
    113: (b"\x80\x81", [("big", BIG_HEADER), ("x", b"\xff")], None, "raises"),
    114: (b"k-ts-poison", [("h", b"\xfe"), ("h", b"\xfe")], -1, "raises"),
}  # fmt: skip
POISON = {i for i, (*_, kind) in ODD.items() if kind}
RAISES = {i for i, (*_, kind) in ODD.items() if kind == "raises"}


def _odd_value(i: int) -> bytes:
    if ODD[i][3] == "undecodable":
        return b"\xff\xfe{not json " + str(i).encode()
    return orjson.dumps({"i": i, "k": f"odd{i}"})


def test_odd_keys_headers_and_timestamps_are_handled_or_dead_lettered_byte_exact(
    broker: Broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    # plain records before and after the odd ones, so every partition goes on past them
    sends: list[tuple[int, bytes, bytes | None, list | None, int | None]] = []
    sends += [(i, orjson.dumps({"i": i, "k": f"k{i % 4}"}), f"k{i % 4}".encode(), None, None)
              for i in range(20)]  # fmt: skip
    sends += [(i, _odd_value(i), key, headers, ts) for i, (key, headers, ts, _) in ODD.items()]
    sends += [(i, orjson.dumps({"i": i, "k": f"k{i % 4}"}), f"k{i % 4}".encode(), None, None)
              for i in range(20, 40)]  # fmt: skip
    with streamq.Producer(broker.url) as producer:
        futures = {i: producer.send(topic, value, key=key, headers=headers, timestamp=ts)
                   for i, value, key, headers, ts in sends}  # fmt: skip
        assert producer.flush(60) == 0
    coords = {i: (f.result().partition, f.result().offset) for i, f in futures.items()}
    by_coord = {c: i for i, c in coords.items()}
    produced = set(coords)

    # the fault: the broker holds the oddities exactly as sent
    stored = {by_coord[(m.partition, m.offset)]: m for m in _read(broker.url, topic)}
    assert set(stored) == produced
    for i, (key, headers, ts, _) in ODD.items():
        assert stored[i].key == key, f"id {i}: the broker holds key {stored[i].key!r}"
        assert _hdrs(stored[i].raw_headers) == _hdrs(headers), f"id {i}: headers changed"
        if ts is not None:
            assert stored[i].timestamp == ts, f"id {i}: timestamp {stored[i].timestamp}"

    group, ledger = unique("e4"), tmp_path / "ledger"
    spec = _app()
    env = _env(broker, topic, group, tmp_path, FAIL_IDS=",".join(map(str, sorted(RAISES))))
    with observe(broker, topic, group) as observer:
        code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(120)
    assert code == 0, out[-3000:]

    # the raising ones really raised on every attempt, and were seen by the handler
    starts = read_ledger(ledger, "S")
    attempts = Counter(e.id for e in starts if e.id in RAISES)
    assert attempts == {i: MAX_RETRIES + 1 for i in RAISES}, attempts

    # the handler saw every key, header and timestamp as sent
    seen = _seen(tmp_path)
    for s in seen:
        if s["i"] not in ODD:
            continue
        key, headers, ts, _ = ODD[s["i"]]
        assert s["key"] == (None if key is None else key.hex()), f"id {s['i']}: key changed"
        assert s["headers"] == [[n, v.hex()] for n, v in headers or ()], (
            f"id {s['i']}: the handler saw other headers"
        )
        if ts is not None:
            assert s["timestamp"] == ts, f"id {s['i']}: the handler saw timestamp {s['timestamp']}"
    reached = {s["i"] for s in seen}
    assert reached & set(ODD) == set(ODD) - {i for i in POISON if ODD[i][3] == "undecodable"}

    # the DLQ holds each poison once, with its key, value and headers byte for byte
    dlq = _read(broker.url, f"{topic}.dlq")
    origins: dict[int, streamq.Message] = {}
    for m in dlq:
        h = dict(m.raw_headers or [])
        origin = (int(h["streamq-original-partition"]), int(h["streamq-original-offset"]))
        assert by_coord[origin] not in origins, f"id {by_coord[origin]} dead-lettered twice"
        origins[by_coord[origin]] = m
    assert set(origins) == POISON
    values = {i: value for i, value, *_ in sends}
    for i, m in origins.items():
        key, headers, ts, kind = ODD[i]
        original = _hdrs(headers)
        assert m.key == key, f"id {i}: DLQ key {m.key!r}, sent {key!r}"
        assert m.value == values[i], f"id {i}: DLQ value changed"
        got = _hdrs(m.raw_headers)
        assert got[: len(original)] == original, f"id {i}: original headers not kept byte-exact"
        assert all(name.startswith("streamq-") for name, _ in got[len(original) :])
        h = dict(got[len(original) :])
        if kind == "undecodable":
            assert h["streamq-error-type"] == b"streamq.errors.DecodeError"
            assert h["streamq-attempts"] == b"1"
        else:
            assert h["streamq-error-type"] == b"builtins.ValueError"
            assert h["streamq-attempts"] == str(MAX_RETRIES + 1).encode()
        if ts is not None:
            assert h["streamq-original-timestamp"] == str(ts).encode()

    # I1 over everything: handled + dead-lettered = produced, each once
    entries = read_ledger(ledger)
    check_run(entries, produced=produced, poison=POISON, starts=starts)
    assert {e.id for e in entries} | set(origins) == produced
    check_commits(observer.samples, entries)
    assert len({e.pid for e in starts}) == 1, "the worker was replaced: something crashed it"
    assert broker.uncommitted(topic, group, Broker.ends(coords)) == {}
    print(f"\n{broker.kind}: {len(entries)} handled, {len(origins)} dead-lettered, "
          f"{len(observer.samples)} commit samples")  # fmt: skip


# -- E5 ------------------------------------------------------------------------------------------

CAP = 1 << 20  # in-flight bytes, per partition and per worker
BIG = 5 << 20
LIMIT = 8 << 20  # Kafka broker, topic and producer limits for the E5 node


@pytest.fixture(params=["kafka", "redis"])
def roomy_broker(request: pytest.FixtureRequest, redis_server) -> Iterator[Broker]:
    """A broker that takes a 5 MB record: Redis as it is, Kafka with 8 MB limits."""
    if request.param == "redis":
        yield Broker("redis", redis_server.url, redis_server.url)
        return
    limits = {"message.max.bytes": str(LIMIT), "replica.fetch.max.bytes": str(LIMIT)}
    with own_kafka(1, settings=limits) as cluster:
        yield Broker("kafka", cluster.url, redis_server.url)


def _roomy_topic(broker: Broker, partitions: int) -> str:
    if broker.kind == "redis":
        return broker.topic(partitions)
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"scenario-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.url.removeprefix("kafka://")})
    topic = NewTopic(name, partitions, config={"max.message.bytes": str(LIMIT)})
    admin.create_topics([topic])[name].result(30)
    return name


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def test_a_5mb_record_passes_1mb_in_flight_caps_alone_and_in_order(
    roomy_broker: Broker, tmp_path: Path
) -> None:
    broker = roomy_broker
    topic = _roomy_topic(broker, 2)
    big_id = 100
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 8}", "pad": "p" * 2000})) for i in range(200)]
    records[big_id] = (big_id, orjson.dumps({"i": big_id, "k": f"k{big_id % 8}", "pad": "B" * BIG}))
    big_size = len(records[big_id][1])
    kafka = {"message.max.bytes": LIMIT} if broker.kind == "kafka" else {}
    with streamq.Producer(broker.url, kafka=kafka) as producer:
        futures = {i: producer.send(topic, value, key=f"k{i % 8}") for i, value in records}
        assert producer.flush(60) == 0
    coords = {i: (f.result().partition, f.result().offset) for i, f in futures.items()}
    big_p = coords[big_id][0]

    group, ledger = unique("e5"), tmp_path / "ledger"
    caps = {"max_in_flight_bytes": CAP, "worker_max_in_flight_bytes": CAP}
    spec = _app(extra=caps)
    env = _env(broker, topic, group, tmp_path, HOLD_ID=str(big_id))
    port = free_port()
    with observe(broker, topic, group) as observer:
        worker = start_worker(tmp_path, spec, env, "--until-idle", "2", "--metrics-port",
                              str(port))  # fmt: skip
        try:
            wait_until(lambda: any(e.id == big_id for e in read_ledger(ledger, "S")), 90,
                       "the 5 MB record's handler to start")  # fmt: skip

            def admitted_alone() -> bool:
                scrape = Scrape(port)
                paused = scrape.by("streamq_partition_paused", "partition")
                return (scrape.total("streamq_in_flight_bytes") >= big_size
                        and len(paused) == 2 and all(v == 1 for v in paused.values()))  # fmt: skip

            wait_until(admitted_alone, 30, "the 5 MB record in flight, every partition paused")
            scrape = Scrape(port)
            in_flight = scrape.by("streamq_in_flight_bytes", "partition")
            rss = _rss_kb(worker.pid)
            (tmp_path / "release").touch()
            code, out = worker.finish(120)
        finally:
            (tmp_path / "release").touch()
    assert code == 0, out[-3000:]

    # the fault: the record was 5 MB, five times the caps, and the handler got all of it
    assert big_size >= 5 * CAP
    sizes = [s["size"] for s in _seen(tmp_path) if s["i"] == big_id]
    assert sizes == [big_size], f"the handler saw sizes {sizes}, {big_size} were sent"
    assert in_flight[str(big_p)] >= big_size, in_flight

    entries = read_ledger(ledger)
    dupes = check_run(entries, produced={i for i, _ in records}, starts=read_ledger(ledger, "S"))
    assert dupes == [], f"records handled twice: {dupes}"
    check_commits(observer.samples, entries)
    assert broker.uncommitted(topic, group, Broker.ends(coords)) == {}
    print(f"\n{broker.kind}: in flight while the 5 MB record ran: {in_flight} bytes; "
          f"worker RSS {rss // 1024} MB")  # fmt: skip


# -- E6 ------------------------------------------------------------------------------------------

KAFKA_LIMIT = 1_048_588  # the broker's default message.max.bytes
PRODUCER_LIMIT = 1_000_000  # librdkafka's default message.max.bytes
ERROR_BYTES = 300_000


class DlqWatch:
    """When the DLQ was last seen empty: a query sent at that time found no record.

    A commit seen before that time happened before the DLQ write, whatever the delays.
    """

    def __init__(self, bootstrap: str, dlq: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("watch"),
                                   "log_level": 0})  # fmt: skip
        self._tp = TopicPartition(dlq, 0)
        self.empty_at = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            sent = time.monotonic_ns()
            try:
                _, high = self._consumer.get_watermark_offsets(self._tp, timeout=2)
            except Exception:
                continue
            if high > 0:
                return
            self.empty_at = sent

    def __enter__(self) -> DlqWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


@pytest.mark.parametrize(
    ("case", "pad"),
    [("fits", 900_000), ("too-big", 997_500)],
    ids=["truncated-dlq-record-fits", "dlq-record-too-big-waits"],
)
def test_a_near_limit_poison_with_a_huge_error_reaches_the_dlq_or_waits(
    kafka_bootstrap: str, tmp_path: Path, case: str, pad: int
) -> None:
    broker = Broker("kafka", f"kafka://{kafka_bootstrap}", "")
    topic = broker.topic(2)
    dlq = f"{topic}.dlq"
    connect(broker.url).admin().create_topic(dlq, 1)
    poison = 20  # key k0, like 0, 4, ... 16 before it and 24, 28, ... after it
    records = [(i, orjson.dumps({"i": i, "k": f"k{i % 4}"})) for i in range(40)]
    records[poison] = (poison, orjson.dumps({"i": poison, "k": "k0", "pad": "P" * pad}))
    payload = records[poison][1]
    coords: dict[int, tuple[int, int]] = {}

    def produce(part: list[tuple[int, bytes]]) -> None:
        with streamq.Producer(broker.url) as producer:
            futures = {i: producer.send(topic, value, key=f"k{i % 4}") for i, value in part}
            assert producer.flush(60) == 0
        coords.update({i: (f.result().partition, f.result().offset) for i, f in futures.items()})

    good = {i for i, _ in records} - {poison}
    group, ledger = unique("e6"), tmp_path / "ledger"
    spec = _app()
    # the poison's last attempt waits for the test, which looks at the commits meanwhile
    env = _env(broker, topic, group, tmp_path, FAIL_IDS=str(poison), ERROR_BYTES=str(ERROR_BYTES),
               HOLD_ID=str(poison), HOLD_ATTEMPT=str(MAX_RETRIES + 1))  # fmt: skip

    def held_since() -> int:
        """When the poison's last attempt started, 0 before."""
        starts = [e.mono_ns for e in read_ledger(ledger, "S") if e.id == poison]
        return max(starts) if len(starts) > MAX_RETRIES else 0

    with observe(broker, topic, group) as observer, DlqWatch(kafka_bootstrap, dlq) as watch:
        worker = start_worker(tmp_path, spec, env)
        try:
            # Records before the poison in its own unit of work: a sync handler's lane reports
            # the records of a unit done only once the whole unit is, poison included.
            produce(records[:poison])
            wait_until(lambda: broker.uncommitted(topic, group, Broker.ends(coords)) == {}, 60,
                       "the records before the poison committed")  # fmt: skip
            produce(records[poison:])
            poison_p, poison_off = coords[poison]
            wait_until(held_since, 60, "the poison's last attempt")
            # a commit sample while the poison is in its handler, and the DLQ seen empty after
            wait_until(lambda: any(held_since() < s.t_ns < watch.empty_at
                                   for s in observer.samples if s.partition == poison_p), 30,
                       "a commit sample")  # fmt: skip
            (tmp_path / "release").touch()
            if case == "fits":
                wait_until(lambda: {e.id for e in read_ledger(ledger)} >= good, 90,
                           "every other record")  # fmt: skip
                wait_until(lambda: broker.uncommitted(topic, group, Broker.ends(coords)) == {},
                           60, "everything committed")  # fmt: skip
            else:
                wait_until(lambda: worker.output().count(f"DLQ write to {dlq}") >= 3, 90,
                           "the DLQ write to fail and be retried")  # fmt: skip
                time.sleep(1)  # a few more commit intervals with the DLQ write failing
        finally:
            (tmp_path / "release").touch()
            worker.send_signal(15)
            code, out = worker.finish(60)

    # the fault: a ~900 KB (or ~1 MB) poison whose error alone would overflow the DLQ record
    attempts = [s for s in _seen(tmp_path) if s["i"] == poison]
    assert attempts and all(s["error_bytes"] > ERROR_BYTES for s in attempts)
    assert attempts[0]["size"] == len(payload) >= pad
    untruncated = len(payload) + 2 * attempts[0]["error_bytes"]  # message header + traceback
    assert untruncated > KAFKA_LIMIT
    entries = read_ledger(ledger)
    samples = [s for s in observer.samples if s.partition == poison_p]
    dead = _read(broker.url, dlq)

    if case == "fits":
        assert code == 0, out[-3000:]
        assert len(attempts) == MAX_RETRIES + 1
        assert len(dead) == 1, f"{len(dead)} DLQ records"
        m = dead[0]
        h = dict(m.raw_headers or [])
        assert (int(h["streamq-original-partition"]), int(h["streamq-original-offset"])) == (
            poison_p, poison_off
        )  # fmt: skip
        assert m.value == payload and m.key == b"k0"
        message, tb = h["streamq-error-message"], h["streamq-traceback"]
        assert len(message) <= 2048 and message.endswith(b"...[truncated]"), message[-64:]
        # each piece of the traceback is capped (the huge message to 2 KB), then the whole
        assert len(tb) <= 8192 and tb.endswith(b"...[truncated]\n"), tb[-64:]
        assert b"raise ValueError(error)" in tb, "the raise site was pushed out"
        size = len(m.value) + len(m.key) + sum(len(n) + len(v) for n, v in m.raw_headers or [])
        assert size < PRODUCER_LIMIT, f"the DLQ record is {size} bytes"
        # nothing committed past the poison while the DLQ did not hold it yet
        assert watch.empty_at, "the DLQ was never seen empty"
        before = [s for s in samples if s.t_ns < watch.empty_at]
        assert any(s.committed == poison_off for s in before)
        past = [s for s in before if s.committed > poison_off]
        assert past == [], f"committed past the poison before its DLQ write: {past[:3]}"
        check_run(entries, produced=good | {poison}, poison={poison},
                  starts=read_ledger(ledger, "S"))  # fmt: skip
        check_commits(observer.samples, entries)
        print(f"\nDLQ record {size} bytes (untruncated it would be {untruncated}); "
              f"{len(before)} samples held at the poison before it")  # fmt: skip
        return

    # C9: the DLQ copy can never be written, so the partition waits at the poison
    assert "too large" in out, out[-3000:]
    assert code == 0, "SIGTERM did not stop the worker cleanly during the DLQ retries"
    retries = out.count(f"DLQ write to {dlq}")
    assert dead == [], "a DLQ record arrived although it was too large"
    assert len(attempts) == MAX_RETRIES + 1, "the poison was handled again instead of waiting"
    past = [s for s in samples if s.committed > poison_off]
    assert past == [], f"committed past an unwritable poison: {past[:3]}"
    assert any(s.committed == poison_off for s in samples)
    after = [e for e in entries if e.partition == poison_p and e.offset > poison_off]
    assert after == [], "records after the poison were handled while it waited"
    left = broker.uncommitted(topic, group, Broker.ends(coords))
    assert left == {poison_p: poison_off}, left
    reachable = {i for i in good if coords[i][0] != poison_p or coords[i][1] < poison_off}
    check_run(entries, produced=reachable, starts=read_ledger(ledger, "S"))
    check_commits(observer.samples, entries)
    print(f"\nexit {code}; {retries} DLQ failure lines; committed stayed at {poison_off}")
