"""End to end on memory://: the guarantees users rely on, on both dispatch cores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict

import pytest
from pydantic import BaseModel

import streamq
from streamq import Message, PartitionHalted, Producer, ShutdownTimeout, TopicPartition
from streamq.brokers.memory import get_log, parse_url
from streamq.runtime.worker import Worker
from tests.core import Core


class Order(BaseModel):
    id: int
    customer: str


@pytest.fixture(autouse=True)
def whole_core(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    core.install(monkeypatch)


def make_app(url: str, **settings) -> streamq.App:
    settings.setdefault("poll_timeout", 0.02)
    settings.setdefault("commit_interval", 0.05)
    return streamq.App("svc", broker=url, **settings)


def log_of(url: str):
    return get_log(parse_url(url)[0])


def committed(url: str, group: str = "svc") -> dict[TopicPartition, int]:
    return dict(log_of(url).group(group).committed)


def dlq_records(url: str, topic: str) -> list[tuple]:
    parts = log_of(url).topics.get(topic, [])
    return [rec for part in parts for rec in part]


def end_offsets(url: str, topic: str) -> dict[TopicPartition, int]:
    return {TopicPartition(topic, p): len(r) for p, r in enumerate(log_of(url).topics[topic])}


def produce_orders(url: str, n: int, customers: int = 50) -> None:
    with Producer(url) as p:
        for i in range(n):
            p.send("orders", {"id": i, "customer": f"c{i % customers}"}, key=f"c{i % customers}")


def test_done_when_exactly_once_in_key_order_and_bad_records_in_dlq(memory_url: str) -> None:
    """The foundation issue's acceptance test, as a user would write it."""
    app = make_app(memory_url)
    seen: list[tuple[str, int]] = []

    @app.handler("orders")
    def handle(order: Order) -> None:
        seen.append((order.customer, order.id))

    produce_orders(memory_url, 3000)
    with Producer(memory_url) as p:
        p.send("orders", b"{not json", key="bad1")
        p.send("orders", b"\xff\xfe", key="bad2")
        p.send("orders", {"id": "seven", "customer": "c1"}, key="bad3")
        p.send("orders", {"customer": "c1"}, key="bad4")
        p.send("orders", None, key="bad5")

    app.run(until_idle=0.2)

    assert sorted(i for _, i in seen) == list(range(3000))  # each valid one exactly once
    by_customer = defaultdict(list)
    for customer, i in seen:
        by_customer[customer].append(i)
    assert all(ids == sorted(ids) for ids in by_customer.values())
    dead = dlq_records(memory_url, "orders.dlq")
    assert sorted(r[0] for r in dead) == [b"bad1", b"bad2", b"bad3", b"bad4", b"bad5"]
    types = {dict(r[2])["streamq-error-type"] for r in dead}
    assert types == {b"streamq.errors.DecodeError", b"streamq.errors.SchemaError"}
    assert all(dict(r[2])["streamq-attempts"] == b"1" for r in dead)  # poison: no retries
    assert committed(memory_url) == end_offsets(memory_url, "orders")
    assert app.stats.handled["orders"] == 3000 and app.stats.dead_lettered["orders"] == 5


def test_retries_in_place_keep_partition_order(memory_url: str) -> None:
    app = make_app(memory_url + "?partitions=1")
    ledger: list[tuple[int, int]] = []
    flaky = {3, 10}

    @app.handler("orders", retry_backoff=0.001, retry_backoff_max=0.01)
    def handle(order: Order, msg: Message) -> None:
        ledger.append((order.id, msg.attempt))
        if order.id in flaky and msg.attempt < 3:
            raise RuntimeError("transient")

    produce_orders(memory_url + "?partitions=1", 15)
    app.run(until_idle=0.2)
    assert ledger[3:6] == [(3, 1), (3, 2), (3, 3)]  # nothing after 3 starts before 3 is done
    assert [i for i, a in ledger if a == 1] == list(range(15))
    assert dlq_records(memory_url, "orders.dlq") == []
    assert app.stats.retried["orders"] == 4


def test_exhausted_retries_go_to_dlq_then_the_partition_moves_on(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    ledger: list[tuple[int, int]] = []

    @app.handler("orders", max_retries=3, retry_backoff=0.001)
    def handle(order: Order, msg: Message) -> None:
        ledger.append((order.id, msg.attempt))
        if order.id == 2:
            raise ValueError(f"cannot charge {order.id}")

    produce_orders(url, 5)
    app.run(until_idle=0.2)
    assert ledger == [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (2, 4), (3, 1), (4, 1)]
    (dead,) = dlq_records(url, "orders.dlq")
    headers = dict(dead[2])
    assert headers["streamq-attempts"] == b"4"
    assert headers["streamq-original-offset"] == b"2"
    assert headers["streamq-error-type"] == b"builtins.ValueError"
    assert headers["streamq-error-message"] == b"cannot charge 2"
    assert b"ValueError: cannot charge 2" in headers["streamq-traceback"]
    assert dead[1] == b'{"id":2,"customer":"c2"}'  # payload byte-exact
    assert committed(url) == {TopicPartition("orders", 0): 5}


def test_reject_dead_letters_at_once(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    attempts = []

    @app.handler("orders", dlq="rejected")
    def handle(order: Order, msg: Message) -> None:
        attempts.append(msg.attempt)
        raise streamq.Reject("not for us")

    produce_orders(url, 2)
    app.run(until_idle=0.2)
    assert attempts == [1, 1]
    assert len(dlq_records(url, "rejected")) == 2


def test_dlq_disabled_halts_the_partition_uncommitted(memory_url: str) -> None:
    url = memory_url + "?partitions=2"
    app = make_app(url)
    handled = []

    @app.handler("orders", dlq=False, max_retries=1, retry_backoff=0.001)
    def handle(msg: Message) -> None:
        if msg.partition == 0 and msg.offset == 3:
            raise RuntimeError("stuck")
        handled.append((msg.partition, msg.offset))

    with Producer(url) as p:
        for i in range(10):
            p.send("orders", b"{}", partition=i % 2)
    with pytest.raises(PartitionHalted, match=r"orders\[0\]"):
        app.run(until_idle=0.2)
    assert committed(url) == {TopicPartition("orders", 0): 3, TopicPartition("orders", 1): 5}
    assert sorted(o for p, o in handled if p == 0) == [0, 1, 2]
    assert dlq_records(url, "orders.dlq") == []


def test_a_new_run_resumes_after_the_committed_position(memory_url: str) -> None:
    first = make_app(memory_url)
    count = []

    @first.handler("orders")
    def h1(order: Order) -> None:
        count.append(order.id)

    produce_orders(memory_url, 200)
    first.run(until_idle=0.1)
    second = make_app(memory_url)
    again: list[int] = []

    @second.handler("orders")
    def h2(order: Order) -> None:
        again.append(order.id)

    second.run(until_idle=0.1)
    assert len(count) == 200 and again == []
    produce_orders(memory_url, 10)
    second.run(until_idle=0.1)
    assert sorted(again) == list(range(10))


def test_async_handlers_run_partitions_concurrently_in_order(memory_url: str) -> None:
    app = make_app(memory_url)
    active = 0
    peak = 0
    per_partition: dict[int, list[int]] = defaultdict(list)

    @app.handler("orders")
    async def handle(order: Order, msg: Message) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        per_partition[msg.partition].append(msg.offset)
        active -= 1

    produce_orders(memory_url, 200)
    app.run(until_idle=0.2)
    assert peak > 1  # more than one partition in flight at once
    assert sum(len(v) for v in per_partition.values()) == 200
    assert all(v == sorted(v) and len(set(v)) == len(v) for v in per_partition.values())


def test_key_ordering_runs_keys_of_one_partition_in_parallel(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url, key_lanes=8)
    active = 0
    peak = 0
    by_key: dict[str, list[int]] = defaultdict(list)

    @app.handler("orders", ordering="key")
    async def handle(order: Order) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        by_key[order.customer].append(order.id)
        active -= 1

    produce_orders(url, 300, customers=20)
    app.run(until_idle=0.2)
    assert peak > 1  # one partition, yet several keys in flight
    assert sum(len(v) for v in by_key.values()) == 300
    assert all(v == sorted(v) for v in by_key.values())
    assert committed(url) == {TopicPartition("orders", 0): 300}


def test_sync_key_handler_moves_only_a_failing_key_aside(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync ``ordering="key"`` handler runs a partition's keys in one lane, in log order.

    A record that fails moves its key to a lane of its own for the backoff: the other keys
    go on meanwhile, the key's later records (in later polls too) wait behind it, and the
    record gets exactly its attempts (the failed first call in the shared lane counts).
    The first unit runs in the callback that brings it (``Lanes._run_here``), which moves
    the key aside as the lane's task would.
    """
    handed = _spy_run_here(monkeypatch)
    url = memory_url + "?partitions=1"
    app = make_app(url, key_lanes=8, max_poll_records=50)
    calls: list[tuple[int, str, int]] = []  # (id, customer, attempt), in call order

    @app.handler("orders", ordering="key", max_retries=2, retry_backoff=0.1,
                 retry_backoff_max=0.1, retry_jitter=False)  # fmt: skip
    def handle(order: Order, msg: Message) -> None:
        calls.append((order.id, order.customer, msg.attempt))
        if order.id == 30:
            raise RuntimeError("order 30 keeps failing")

    produce_orders(url, 300, customers=20)
    app.run(until_idle=0.3)
    assert [(i, a) for i, _, a in calls if i == 30] == [(30, 1), (30, 2), (30, 3)]
    (dead,) = dlq_records(url, "orders.dlq")
    assert dict(dead[2])["streamq-original-offset"] == b"30"
    handled = [i for i, _, _ in calls if i != 30]
    assert sorted(handled) == [i for i in range(300) if i != 30]  # each once
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, customer, attempt in calls:
        if attempt == 1:
            by_key[customer].append(i)
    assert all(v == sorted(v) for v in by_key.values())
    last_try = max(n for n, (i, _, _) in enumerate(calls) if i == 30)
    first_try = calls.index((30, "c10", 1))
    same_key_later = [n for n, (i, c, _) in enumerate(calls) if c == "c10" and i > 30]
    assert min(same_key_later) > last_try, "a later record of the key overtook the failing one"
    other_keys_meanwhile = [i for i, c, _ in calls[first_try:last_try] if c != "c10"]
    assert len(other_keys_meanwhile) > 100, "the other keys waited for the backoff"
    assert committed(url) == {TopicPartition("orders", 0): 300}
    assert handed[0] == []  # the unit with order 30 ended in the callback: its key moved aside


def test_batch_handler_isolates_the_poison(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    sizes: list[int] = []
    good: list[int] = []

    @app.handler("orders", batch=True, max_batch=16, max_retries=1, retry_backoff=0.001)
    def handle(batch: list[Message]) -> None:
        sizes.append(len(batch))
        ids = [m.json()["id"] for m in batch]
        if 20 in ids:
            raise ValueError("bad record in batch")
        good.extend(ids)

    produce_orders(url, 40)
    app.run(until_idle=0.2)
    assert max(sizes) <= 16
    assert sorted(set(good)) == [i for i in range(40) if i != 20]
    (dead,) = dlq_records(url, "orders.dlq")
    assert dict(dead[2])["streamq-original-offset"] == b"20"
    assert committed(url) == {TopicPartition("orders", 0): 40}


def _spy_batches_here(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What each batch run in the callback that brought it came to (None: it finished)."""
    from streamq.runtime.loop import Lanes

    outcomes: list[object] = []
    original = Lanes._run_batch_here

    def spy(self: Lanes, lane: object, unit: object, until: float) -> object:
        rest = original(self, lane, unit, until)  # type: ignore[arg-type]
        outcomes.append(rest if rest is None else type(rest[0]).__name__)
        return rest

    monkeypatch.setattr(Lanes, "_run_batch_here", spy)
    return outcomes


def test_batch_failing_in_its_callback_gets_no_extra_attempt(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose first call fails in the callback (no task) has max_retries retries left."""
    outcomes = _spy_batches_here(monkeypatch)
    url = memory_url + "?partitions=1"
    app = make_app(url)
    calls: list[tuple[int, list[int]]] = []

    @app.handler("orders", batch=True, max_batch=100, max_retries=2, retry_backoff=0.001)
    def handle(batch: list[Message]) -> None:
        ids = [m.json()["id"] for m in batch]
        calls.append((batch[0].attempt, ids))
        if 20 in ids:
            raise ValueError("bad record in batch")

    produce_orders(url, 40)
    app.run(until_idle=0.2)
    assert "FailedBatch" in outcomes  # the first call ran in the callback, and failed there
    whole = [attempt for attempt, ids in calls if len(ids) > 1 and 20 in ids]
    assert whole == [1, 2, 3]  # max_retries=2: three calls in all, as in a task
    alone = sorted(ids[0] for _, ids in calls if len(ids) == 1)
    assert alone == list(range(40))  # then each record alone once
    (dead,) = dlq_records(url, "orders.dlq")
    assert dict(dead[2])["streamq-original-offset"] == b"20"
    assert committed(url) == {TopicPartition("orders", 0): 40}


@pytest.mark.parametrize("max_batch", [50, 20])
def test_batches_run_in_their_callback_when_they_can(
    memory_url: str, monkeypatch: pytest.MonkeyPatch, max_batch: int
) -> None:
    """An idle lane handles a polled unit in the callback; one over max_batch goes to a task."""
    outcomes = _spy_batches_here(monkeypatch)
    url = memory_url + "?partitions=1"
    app = make_app(url, max_poll_records=50)
    seen: list[int] = []
    sizes: list[int] = []

    @app.handler("orders", batch=True, max_batch=max_batch)
    def handle(batch: list[Message]) -> None:
        sizes.append(len(batch))
        seen.extend(m.json()["id"] for m in batch)

    produce_orders(url, 400)
    app.run(until_idle=0.2)
    assert seen == list(range(400))  # in order, each once
    assert max(sizes) <= max_batch
    if max_batch == 50:
        assert outcomes and set(outcomes) == {None}  # every unit ran whole in its callback
    else:
        assert set(outcomes) == {"list"}  # 50-record units: to the task, taken 20 at a time
    assert committed(url) == {TopicPartition("orders", 0): 400}


@pytest.mark.parametrize("critical", [SystemExit, MemoryError])
def test_process_critical_errors_in_a_batch_are_never_poison(
    memory_url: str, critical: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _spy_batches_here(monkeypatch)
    url = memory_url + "?partitions=1"
    app = make_app(url)
    calls = []

    @app.handler("orders", batch=True, max_retries=3)
    def handle(batch: list[Message]) -> None:
        calls.append(len(batch))
        raise critical()

    produce_orders(url, 5)
    with pytest.raises(critical):
        app.run(until_idle=0.2)
    assert outcomes == ["FailedBatch"]
    assert calls == [5]  # no retries, no record alone
    assert dlq_records(url, "orders.dlq") == []
    assert committed(url).get(TopicPartition("orders", 0), 0) == 0  # redelivered from the first


def test_commit_before_is_at_most_once(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    positions_seen = []

    @app.handler("orders", commit="before")
    def handle(msg: Message) -> None:
        positions_seen.append(committed(url).get(TopicPartition("orders", 0), 0) > msg.offset)

    produce_orders(url, 30)
    app.run(until_idle=0.2)
    assert len(positions_seen) == 30 and all(positions_seen)  # committed before handling


@pytest.mark.parametrize("critical", [SystemExit, KeyboardInterrupt, MemoryError])
def test_process_critical_errors_are_never_poison(memory_url: str, critical: type) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url)
    calls = []

    @app.handler("orders", max_retries=3)
    def handle(order: Order) -> None:
        calls.append(order.id)
        if order.id == 2:
            raise critical()

    produce_orders(url, 5)
    with pytest.raises(critical):
        app.run(until_idle=0.2)
    assert calls == [0, 1, 2]  # no retries, nothing after it
    assert dlq_records(url, "orders.dlq") == []
    assert committed(url) == {TopicPartition("orders", 0): 2}  # redelivered from the record


def test_backpressure_pauses_and_drops_nothing(memory_url: str, monkeypatch) -> None:
    from streamq.brokers.memory import MemoryConsumer

    pauses: list[list] = []
    original = MemoryConsumer.pause
    monkeypatch.setattr(
        MemoryConsumer, "pause", lambda self, tps: (pauses.append(list(tps)), original(self, tps))
    )
    app = make_app(memory_url, max_in_flight=20, max_poll_records=50)
    seen = []

    @app.handler("orders")
    async def handle(order: Order) -> None:
        await asyncio.sleep(0.0005)
        seen.append(order.id)

    produce_orders(memory_url, 500)
    app.run(until_idle=0.2)
    assert pauses  # the cap was hit
    assert sorted(seen) == list(range(500))


def test_members_of_one_group_share_partitions_without_duplicates(memory_url: str) -> None:
    produce_orders(memory_url, 2000)
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    by_member: dict[int, int] = defaultdict(int)

    def member(n: int) -> streamq.App:
        # Small fetches and caps, so the first member cannot swallow the backlog at once.
        app = make_app(memory_url, max_poll_records=20, max_in_flight=40)

        @app.handler("orders")
        def handle(order: Order) -> None:
            time.sleep(0.0002)
            with lock:
                seen.append((order.customer, order.id))
                by_member[n] += 1

        return app

    errors: list[BaseException] = []

    def run(app: streamq.App) -> None:
        try:
            app.run(until_idle=0.5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(member(n),)) for n in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(30)
    assert not errors
    assert by_member[0] > 0 and by_member[1] > 0, "the second member never got partitions"
    assert sorted(i for _, i in seen) == list(range(2000))  # revoke drained and committed
    by_customer = defaultdict(list)
    for customer, i in seen:
        by_customer[customer].append(i)
    assert all(v == sorted(v) for v in by_customer.values())


def test_until_idle_waits_for_partitions_held_by_another_member(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle time must not count while the assignment is still being handed over."""
    import streamq.brokers.memory as memory
    from streamq.brokers import connect
    from streamq.settings import load_settings

    produce_orders(memory_url, 100)
    holder = connect(memory_url).consumer("svc", load_settings(broker=memory_url))
    holder.subscribe(["orders"], lambda t: None, lambda t: None, lambda t: None)
    holder.poll_batch(0, 0)  # owns all partitions, then never polls again (a dead member)
    monkeypatch.setattr(memory, "SESSION_TIMEOUT", 0.6)
    app = make_app(memory_url)
    seen = []

    @app.handler("orders")
    def handle(order: Order) -> None:
        seen.append(order.id)

    app.run(until_idle=0.1)
    assert sorted(seen) == list(range(100))  # it waited out the dead member instead of exiting


def test_hung_handler_at_shutdown_times_out_uncommitted(memory_url: str) -> None:
    url = memory_url + "?partitions=1"
    app = make_app(url, shutdown_timeout=0.3)
    started = threading.Event()

    @app.handler("orders")
    async def handle(order: Order) -> None:
        if order.id == 1:
            started.set()
            await asyncio.sleep(3600)

    produce_orders(url, 3)
    worker = Worker(app, None)
    outcome: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(worker.serve())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    assert started.wait(10), "the handler never started"
    worker.request_stop()
    thread.join(20)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ShutdownTimeout)
    assert committed(url) == {TopicPartition("orders", 0): 1}  # the hung record is redelivered


def test_a_partition_lane_reports_spans_and_the_others_their_records(
    memory_url: str, core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition's one lane hands the poll thread a Span (it never reads those records),
    and so does a partition's shared key lane for the units it keeps whole; key lanes, and
    deduplicated lanes skip or regroup records, and report them one by one."""
    from streamq import offsets

    kinds: dict[str, set[str]] = defaultdict(set)
    complete = offsets.OffsetTracker.complete

    def spy(self, tp, epoch, msgs):  # type: ignore[no-untyped-def]
        kinds[tp.topic].add(type(msgs).__name__)
        return complete(self, tp, epoch, msgs)

    monkeypatch.setattr(offsets.OffsetTracker, "complete", spy)
    app = make_app(memory_url)
    seen: dict[str, int] = defaultdict(int)
    failed: list[int] = []
    topics = ("by-partition", "by-key", "key-failed-once", "deduplicated")
    for topic, options in (
        ("by-partition", {}),
        ("by-key", {"ordering": "key"}),
        ("key-failed-once", {"ordering": "key", "retry_backoff": 0.01}),
        ("deduplicated", {"dedup": "memory"}),
    ):

        def handle(m: Message, topic: str = topic) -> None:
            if topic == "key-failed-once" and m.offset == 5 and not failed:
                failed.append(m.offset)  # its key leaves the shared lane for its own
                raise ValueError("once")
            seen[topic] += 1

        app.handler(topic, **options)(handle)  # type: ignore[arg-type]
    with Producer(memory_url) as p:
        for i in range(300):
            for topic in topics:
                p.send(topic, {"i": i}, key=f"k{i % 7}")
    app.run(until_idle=0.2)

    assert failed == [5]
    assert seen == dict.fromkeys(topics, 300)
    assert kinds == {
        "by-partition": {core.Span.__name__},
        "by-key": {core.Span.__name__},  # 7 keys of fast records: no key left the lane
        # the key lane's records one by one: its retried record, then the key's others
        "key-failed-once": {core.Span.__name__, "Retrying", "list"},
        "deduplicated": {"list"},
    }
    done = committed(memory_url)
    for topic in topics:
        ends = {tp: end for tp, end in end_offsets(memory_url, topic).items() if end}
        assert ends and all(done.get(tp) == end for tp, end in ends.items()), topic


def test_a_burst_of_fast_records_stays_in_its_partitions_shared_lane(
    memory_url: str, core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ordering="key": a hot key leaves the shared lane only when its burst would keep the
    keys behind it waiting (``Lanes._spread``); a burst of fast records does not, so no key
    lane, task or per-record report is made for it."""
    from streamq import offsets
    from streamq.runtime import loop as lanes_loop

    kinds: set[str] = set()
    complete = offsets.OffsetTracker.complete

    def spy(self, tp, epoch, msgs):  # type: ignore[no-untyped-def]
        kinds.add(type(msgs).__name__)
        return complete(self, tp, epoch, msgs)

    monkeypatch.setattr(offsets.OffsetTracker, "complete", spy)
    costs: list[float] = []
    spread = lanes_loop.Lanes._spread

    def spy_spread(self, lane, unit):  # type: ignore[no-untyped-def]
        costs.append(lane.cost.per_record)
        return spread(self, lane, unit)

    monkeypatch.setattr(lanes_loop.Lanes, "_spread", spy_spread)
    app = make_app(memory_url, max_poll_records=500)
    seen: list[int] = []

    @app.handler("hot", ordering="key")
    def handle(m: Message) -> None:
        seen.append(m.offset)

    with Producer(memory_url) as p:
        for i in range(2000):
            p.send("hot", {"i": i}, key="hot" if i % 10 else f"cold{i}", partition=0)
    app.run(until_idle=0.2)

    assert sorted(seen) == list(range(2000))
    assert len(costs) >= 2 and costs[-1] > 0  # units of 500, 450 of them the hot key's
    assert kinds == {core.Span.__name__}  # whole units, no key lane


def _spy_run_here(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """What each unit run in the callback (``Lanes._run_here``) handed to its lane's task."""
    from streamq.runtime import loop as lanes_loop

    handed: list[list[str]] = []
    run_here = lanes_loop.Lanes._run_here

    def spy(self, lane, unit, until):  # type: ignore[no-untyped-def]
        rest = run_here(self, lane, unit, until)
        handed.append([] if rest is None else [type(u).__name__ for u in rest])
        return rest

    monkeypatch.setattr(lanes_loop.Lanes, "_run_here", spy)
    return handed


def test_a_unit_run_in_the_callback_past_the_hold_goes_on_in_its_task(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle inline lane runs its unit without a task of its own; past the hold the rest
    goes on in the lane's task, in order, each record once."""
    from streamq.runtime import loop as lanes_loop

    handed = _spy_run_here(monkeypatch)
    monkeypatch.setattr(lanes_loop, "INLINE_HOLD", 0.02)
    url = memory_url + "?partitions=1"
    app = make_app(url, max_poll_records=500)
    calls: list[int] = []

    @app.handler("orders")
    def handle(order: Order) -> None:
        calls.append(order.id)
        if order.id < 100:
            time.sleep(0.001)  # a slice of these (64 records) passes the hold

    produce_orders(url, 300)
    app.run(until_idle=0.2)

    assert handed[0] == ["list"]  # the first unit was cut: its rest went to the task
    assert calls == list(range(300))
    assert committed(url) == {TopicPartition("orders", 0): 300}


def test_a_record_failing_in_the_callback_gets_its_attempts_in_its_task(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed record goes to the lane's task first, as ``Retrying`` (its first call
    already failed): no extra attempt, and nothing after it starts before it is done."""
    from streamq.runtime.lanes import Retrying

    handed = _spy_run_here(monkeypatch)
    url = memory_url + "?partitions=1"
    app = make_app(url, max_poll_records=500)
    calls: list[tuple[int, int]] = []

    @app.handler("orders", max_retries=2, retry_backoff=0.001)
    def handle(order: Order, msg: Message) -> None:
        calls.append((order.id, msg.attempt))
        if order.id == 50 and msg.attempt < 3:
            raise RuntimeError("transient")

    produce_orders(url, 100)
    app.run(until_idle=0.2)

    assert handed[0] == [Retrying.__name__, "list"]  # cut at record 50, the rest after it
    assert [i for i, _ in calls] == [*range(51), 50, 50, *range(51, 100)]
    assert [a for i, a in calls if i == 50] == [1, 2, 3]
    assert dlq_records(url, "orders.dlq") == []
    assert app.stats.retried["orders"] == 2
    assert committed(url) == {TopicPartition("orders", 0): 100}
