"""Both dispatch cores split batches identically; the fixture id says which one ran."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamq import dispatch
from streamq.message import Message, TopicPartition


def make(records: list[tuple[str, int, bytes | None]]) -> list[Message]:
    counters: dict[tuple[str, int], int] = {}
    out = []
    for topic, partition, key in records:
        off = counters.get((topic, partition), 0)
        counters[(topic, partition)] = off + 1
        out.append(Message(topic, partition, off, key, b"v"))
    return out


def test_split_keeps_partition_order(dispatch_impl: type) -> None:
    batch = make([("a", 0, b"k1"), ("a", 1, None), ("a", 0, b"k2"), ("b", 0, None), ("a", 1, b"x")])
    units = dispatch_impl().split(batch)
    assert list(units) == [TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)]
    assert [m.offset for m in units[TopicPartition("a", 0)]] == [0, 1]
    assert [m.offset for m in units[TopicPartition("a", 1)]] == [0, 1]


def test_split_keys_groups_by_key_in_order(dispatch_impl: type) -> None:
    batch = make([("a", 0, k) for k in [b"x", b"y", b"x", None, b"y", b"x"]])
    lanes = dispatch_impl().split_keys(batch, 8)
    for unit in lanes.values():
        offsets = [m.offset for m in unit]
        assert offsets == sorted(offsets)
        assert len({m.key for m in unit if m.key is not None}) <= 8
    xs = [m for unit in lanes.values() for m in unit if m.key == b"x"]
    assert len(xs) == 3 and len({id(u) for u in lanes.values() if xs[0] in u}) == 1
    assert sum(len(u) for u in lanes.values()) == len(batch)


def test_split_keys_rejects_zero_lanes(dispatch_impl: type) -> None:
    with pytest.raises(ValueError):
        dispatch_impl().split_keys(make([("a", 0, b"x")]), 0)


def test_empty_batch(dispatch_impl: type) -> None:
    assert dispatch_impl().split([]) == {}
    assert dispatch_impl().split_keys([], 4) == {}


records = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(min_value=0, max_value=3),
        st.one_of(st.none(), st.binary(max_size=3)),
    ),
    max_size=80,
)


def _shape(units: dict) -> list:
    return [(k, [(m.topic, m.partition, m.offset) for m in v]) for k, v in units.items()]


@pytest.mark.skipif(dispatch.NO_EXTENSIONS, reason="STREAMQ_NO_EXTENSIONS=1: no compiled core")
@given(recs=records, lanes=st.integers(min_value=1, max_value=9))
def test_cython_and_python_produce_identical_units(recs: list, lanes: int) -> None:
    from streamq._dispatch import Dispatcher as CDispatcher

    batch = make(recs)
    py, cy = dispatch._DispatcherPy(), CDispatcher()
    assert _shape(py.split(batch)) == _shape(cy.split(batch))
    for tp_msgs in py.split(batch).values():
        assert _shape(py.split_keys(tp_msgs, lanes)) == _shape(cy.split_keys(tp_msgs, lanes))


def test_implementation_is_named() -> None:
    assert dispatch.IMPLEMENTATION in ("cython", "python")
    expected = "python" if dispatch.NO_EXTENSIONS else "cython"
    assert expected == dispatch.IMPLEMENTATION


# -- the rest of the per-record core: both implementations, then compared --------------------


def _cores() -> list:
    from streamq import dispatch as d
    from streamq import message as msg_mod

    py = pytest.param(
        (msg_mod._MessagePy, d._kafka_messages_py, d._call_each_py, d._coordinate_keys_py),
        id="pure-python",
    )
    if dispatch.NO_EXTENSIONS:
        return [py]
    from streamq import _dispatch as c

    cy = pytest.param(
        (c.Message, c.kafka_messages, c.call_each, c.coordinate_keys),
        id="cython",
        marks=pytest.mark.cython,
    )
    return [cy, py]


@pytest.fixture(params=_cores())
def core(request: pytest.FixtureRequest) -> tuple:
    return request.param


def _confluent_records() -> list:
    ck = pytest.importorskip("confluent_kafka")
    return [
        ck.Message(topic="t", partition=3, offset=2**40, key=b"k", value=b'{"a":1}',
                   timestamp=(1, 1_700_000_000_123), headers=[("h", b"1"), ("h", b"2")]),
        ck.Message(topic="t", partition=3, offset=2**40 + 1, key=None, value=None,
                   timestamp=(0, -1)),
        ck.Message(topic="t", partition=0, offset=0,
                   error=ck.KafkaError(ck.KafkaError._PARTITION_EOF)),
        ck.Message(topic="u", partition=1, offset=7, key=b"", value=b""),
    ]  # fmt: skip


def _fields(m: object) -> tuple:
    return tuple(
        getattr(m, a)
        for a in ("topic", "partition", "offset", "key", "value", "raw_headers", "timestamp",
                  "attempt")
    )  # fmt: skip


def test_kafka_records_become_messages(core: tuple) -> None:
    _, kafka_messages, _, _ = core
    errors: list = []
    out = kafka_messages(_confluent_records(), errors.append)
    assert [type(m) for m in out] == [Message] * 3  # the class handlers get, either way
    assert [_fields(m) for m in out] == [
        ("t", 3, 2**40, b"k", b'{"a":1}', [("h", b"1"), ("h", b"2")], 1_700_000_000_123, 1),
        ("t", 3, 2**40 + 1, None, None, None, -1, 1),
        ("u", 1, 7, b"", b"", None, 0, 1),
    ]
    assert out[0].headers == {"h": b"2"}
    assert len(errors) == 1 and errors[0].code() == -191


def test_field_reads_are_checked_against_the_installed_confluent_kafka() -> None:
    """The compiled core reads records by field only after its probe matched (2.2, 2.16)."""
    pytest.importorskip("confluent_kafka")
    from streamq.brokers import kafka

    assert kafka.FIELD_READS is (not dispatch.NO_EXTENSIONS)


def test_call_each_stops_at_the_record_that_raised(core: tuple) -> None:
    message_type, _, call_each, _ = core
    unit = [message_type("t", 0, o, None, b"v") for o in range(10)]
    seen: list[int] = []

    def invoke(m: object) -> None:
        seen.append(m.offset)  # type: ignore[attr-defined]
        if m.offset == 6:  # type: ignore[attr-defined]
            raise KeyError("boom")

    failed: list = []
    assert call_each(invoke, unit, 2, 5, failed) == 5 and not failed
    assert call_each(invoke, unit, 5, 99, failed) == 6
    assert seen == [2, 3, 4, 5, 6] and isinstance(failed[0], KeyError)


def test_coordinate_keys_match_the_dedup_default(core: tuple) -> None:
    from streamq.dedup import coordinates

    message_type, _, _, coordinate_keys = core
    unit = [message_type("orders", 2, o, None, b"v") for o in (0, 5, 2**40)]
    assert coordinate_keys(unit) == [coordinates(m) for m in unit]


def test_message_behaves_the_same_in_both_cores(core: tuple) -> None:
    import pickle

    message_type = core[0]
    m = message_type("t", 1, 5, b"k", b'{"a": [1]}', [("x", b"1")], 99)
    m.attempt = 3
    assert m.json() == {"a": [1]} and m.headers == {"x": b"1"} and m.tp == TopicPartition("t", 1)
    assert repr(m) == (
        "Message('t', partition=1, offset=5, key=b'k', value=b'{\"a\": [1]}', attempt=3)"
    )
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is message_type and _fields(back) == _fields(m)
    with pytest.raises(AttributeError):
        m.unknown = 1  # no per-record __dict__
    with pytest.raises(ValueError, match="tombstone"):
        message_type("t", 0, 0, None, None).json()


def test_list_subclasses_are_units_too(core: tuple) -> None:
    """The worker's single-record probes are a list subclass: every step must take them."""

    class Probe(list):
        pass

    from streamq import offsets

    message_type, _, call_each, coordinate_keys = core
    compiled = message_type.__module__ == "streamq._dispatch"
    tracker = offsets.PartitionOffsets if compiled else offsets._PartitionOffsetsPy
    unit = Probe([message_type("t", 0, 7, b"k", b"v")])
    failed: list = []
    assert call_each(lambda m: None, unit, 0, 1, failed) == 1 and not failed
    assert coordinate_keys(unit) == ["t:0:7"]
    part = tracker(1)
    assert part.track_messages(unit) == 1
    assert part.complete_messages(unit) == (1, 1)
    assert part.position == 8


@given(st.binary(max_size=40), st.sampled_from([b"", b"NaN", b"Infinity", b"Infinit", b"Na"]))
def test_nonfinite_scan_agrees_across_cores(data: bytes, word: bytes) -> None:
    from streamq.dispatch import _has_nonfinite_py, has_nonfinite

    value = data[: len(data) // 2] + word + data[len(data) // 2 :]
    assert has_nonfinite(value) == _has_nonfinite_py(value)


def test_redis_entries_become_messages_alike_in_both_cores() -> None:
    from streamq import dispatch as d
    from streamq.brokers.redis.entries import decode_headers, encode_headers, entry_to_message

    entries = [
        (b"1700000000123-0", {b"v": b'{"a":1}', b"k": b"key", b"t": b"1699999999999"}),
        (b"1700000000123-7", {b"v": b"x", b"h": encode_headers([("h", b"1"), ("h", b"2")])}),
        (b"1700000000200-1", {}),  # trimmed away, redelivered from the pending list
        (b"1700000000300-2", {b"v": None, b"k": None}),
    ]
    cores = [d._redis_messages_py]
    if not dispatch.NO_EXTENSIONS:
        from streamq import _dispatch

        cores.append(_dispatch.redis_messages)
    shapes = []
    for convert in cores:
        delivered: list[int] = []
        trimmed: list = []
        out = convert("orders", 3, entries, delivered, trimmed, 20, decode_headers)
        shapes.append(([_fields(m) for m in out], delivered, trimmed))
    assert all(shape == shapes[0] for shape in shapes)
    fields, delivered, trimmed = shapes[0]
    expected = [_fields(entry_to_message("orders", 3, i, f)) for i, f in entries if f]
    assert fields == expected and trimmed == [b"1700000000200-1"]
    assert delivered == [
        (1700000000123 << 20),
        (1700000000123 << 20) | 7,
        (1700000000300 << 20) | 2,
    ]
