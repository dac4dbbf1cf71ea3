"""Both per-record cores behave identically; the ``core`` fixture's id says which one ran."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamq import _native, dispatch, murmur2, pipeline
from streamq.brokers.kafka import producer as kafka_producer
from streamq.message import Message, TopicPartition
from streamq.offsets import PartitionOffsets, Span, span_of
from streamq.runtime import outbox
from tests.core import COMPILED, COMPILED_NAMES, CORES, NOT_TWINS, PURE_PYTHON, RUNNING, Core


def make(records: list[tuple[str, int, bytes | None]], message_type: type = Message) -> list:
    counters: dict[tuple[str, int], int] = {}
    out = []
    for topic, partition, key in records:
        off = counters.get((topic, partition), 0)
        counters[(topic, partition)] = off + 1
        out.append(message_type(topic, partition, off, key, b"v"))
    return out


def test_split_keeps_partition_order(core: Core) -> None:
    recs = [("a", 0, b"k1"), ("a", 1, None), ("a", 0, b"k2"), ("b", 0, None), ("a", 1, b"x")]
    batch = make(recs, core.Message)
    units = core.Dispatcher().split(batch)
    assert list(units) == [TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)]
    assert [m.offset for m in units[TopicPartition("a", 0)]] == [0, 1]
    assert [m.offset for m in units[TopicPartition("a", 1)]] == [0, 1]


def test_split_keys_groups_by_key_in_order(core: Core) -> None:
    batch = make([("a", 0, k) for k in [b"x", b"y", b"x", None, b"y", b"x"]], core.Message)
    lanes = core.Dispatcher().split_keys(batch, 8)
    for unit in lanes.values():
        offsets = [m.offset for m in unit]
        assert offsets == sorted(offsets)
        assert len({m.key for m in unit if m.key is not None}) <= 8
    xs = [m for unit in lanes.values() for m in unit if m.key == b"x"]
    assert len(xs) == 3 and len({id(u) for u in lanes.values() if xs[0] in u}) == 1
    assert sum(len(u) for u in lanes.values()) == len(batch)


def test_split_keys_rejects_zero_lanes(core: Core) -> None:
    with pytest.raises(ValueError):
        core.Dispatcher().split_keys(make([("a", 0, b"x")], core.Message), 0)
    with pytest.raises(ValueError):
        core.Dispatcher().busiest_key_lane(make([("a", 0, b"x")], core.Message), 0)


def test_busiest_key_lane_counts_the_lane_split_keys_would_fill_most(core: Core) -> None:
    keys = [b"x", b"y", b"x", None, b"y", b"x", None]
    batch = make([("a", 0, k) for k in keys], core.Message)
    assert core.Dispatcher().busiest_key_lane(batch, 1) == 7  # one lane takes every key
    assert core.Dispatcher().busiest_key_lane(batch, 10_000) >= 3  # x's own lane, at least
    split = core.Dispatcher().split_keys(batch, 16)
    assert core.Dispatcher().busiest_key_lane(batch, 16) == max(map(len, split.values()))


def test_empty_batch(core: Core) -> None:
    assert core.Dispatcher().split([]) == {}
    assert core.Dispatcher().split_keys([], 4) == {}
    assert core.Dispatcher().busiest_key_lane([], 4) == 0


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


@pytest.mark.cython
@given(recs=records, lanes=st.integers(min_value=1, max_value=9))
def test_cython_and_python_produce_identical_units(recs: list, lanes: int) -> None:
    assert COMPILED is not None
    batch = make(recs)
    py, cy = PURE_PYTHON.Dispatcher(), COMPILED.Dispatcher()
    assert _shape(py.split(batch)) == _shape(cy.split(batch))
    for tp_msgs in py.split(batch).values():
        assert _shape(py.split_keys(tp_msgs, lanes)) == _shape(cy.split_keys(tp_msgs, lanes))
        busiest = max(len(u) for u in py.split_keys(tp_msgs, lanes).values())
        assert py.busiest_key_lane(tp_msgs, lanes) == cy.busiest_key_lane(tp_msgs, lanes) == busiest


def test_implementation_is_named() -> None:
    assert dispatch.IMPLEMENTATION in ("cython", "python")
    expected = "python" if dispatch.NO_EXTENSIONS else "cython"
    assert expected == dispatch.IMPLEMENTATION


# -- the ``core`` fixture names every piece with a twin ----------------------------------------


@pytest.mark.cython
def test_the_core_fixture_names_every_piece_the_compiled_module_exports() -> None:
    """A new twin in ``_dispatch`` must become a ``Core`` field, or no test runs it twice."""
    assert _native.native is not None
    exported = {
        name
        for name, obj in vars(_native.native).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "streamq._dispatch"
    }
    named = {COMPILED_NAMES.get(piece, piece) for piece in Core.pieces()}
    assert exported == named | set(NOT_TWINS)


def test_the_core_fixture_names_what_streamq_runs() -> None:
    """Each piece streamq bound at import is the one the fixture names for that core (the
    supervisor looks ``watch_parent`` up when it starts a child, so it has no binding)."""
    bound = {name: getattr(dispatch, name) for name in dispatch.__all__}
    bound.update(Message=Message, PartitionOffsets=PartitionOffsets, Span=Span, span_of=span_of)
    bound.update(Acks=outbox.Acks, Relay=kafka_producer.Relay, outputs_of=pipeline.outputs_of)
    bound.update(murmur2=murmur2.murmur2, partition_for_key=murmur2.partition_for_key)
    for piece in Core.pieces():
        if piece != "watch_parent":
            assert bound[piece] is getattr(RUNNING, piece), piece


# -- the rest of the per-record core: both implementations, then compared --------------------


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


def test_kafka_records_become_messages(core: Core) -> None:
    errors: list = []
    out = core.kafka_messages(_confluent_records(), errors.append)
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


def test_call_each_stops_at_the_record_that_raised(core: Core) -> None:
    unit = [core.Message("t", 0, o, None, b"v") for o in range(10)]
    seen: list[int] = []

    def invoke(m: object) -> None:
        seen.append(m.offset)  # type: ignore[attr-defined]
        if m.offset == 6:  # type: ignore[attr-defined]
            raise KeyError("boom")

    failed: list = []
    assert core.call_each(invoke, unit, 2, 5, failed) == 5 and not failed
    assert core.call_each(invoke, unit, 5, 99, failed) == 6
    assert seen == [2, 3, 4, 5, 6] and isinstance(failed[0], KeyError)


def test_coordinate_keys_match_the_dedup_default(core: Core) -> None:
    from streamq.dedup import coordinates

    unit = [core.Message("orders", 2, o, None, b"v") for o in (0, 5, 9, 10, 2**40)]
    # the compiled core writes digits by hand and builds ASCII strings directly: every edge
    unit += [core.Message("orders", 3, o, None, b"v") for o in (2**63 - 1, -1, -(2**63))]
    unit += [core.Message("bestellungen-ä", 3, o, None, b"v") for o in (7, 100)]
    unit += [core.Message("orders", 3, 12, None, b"v"), core.Message("o" * 500, 1, 3, None, b"")]
    keys = core.coordinate_keys(unit)
    assert keys == [coordinates(m) for m in unit]
    assert [hash(k) for k in keys] == [hash(coordinates(m)) for m in unit]  # true str objects


def test_message_behaves_the_same_in_both_cores(core: Core) -> None:
    import pickle

    m = core.Message("t", 1, 5, b"k", b'{"a": [1]}', [("x", b"1")], 99)
    m.attempt = 3
    assert m.json() == {"a": [1]} and m.headers == {"x": b"1"} and m.tp == TopicPartition("t", 1)
    assert repr(m) == (
        "Message('t', partition=1, offset=5, key=b'k', value=b'{\"a\": [1]}', attempt=3)"
    )
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is core.Message and _fields(back) == _fields(m)
    with pytest.raises(AttributeError):
        m.unknown = 1  # no per-record __dict__
    with pytest.raises(ValueError, match="tombstone"):
        core.Message("t", 0, 0, None, None).json()


def test_list_subclasses_are_units_too(core: Core) -> None:
    """The worker's single-record probes are a list subclass: every step must take them."""

    class Probe(list):
        pass

    unit = Probe([core.Message("t", 0, 7, b"k", b"v")])
    failed: list = []
    assert core.call_each(lambda m: None, unit, 0, 1, failed) == 1 and not failed
    assert core.coordinate_keys(unit) == ["t:0:7"]
    part = core.PartitionOffsets(1)
    assert part.track_messages(unit) == 1
    assert part.complete_messages(unit) == (1, 1)
    assert part.position == 8


@pytest.mark.cython
@given(st.binary(max_size=40), st.sampled_from([b"", b"NaN", b"Infinity", b"Infinit", b"Na"]))
def test_nonfinite_scan_agrees_across_cores(data: bytes, word: bytes) -> None:
    assert COMPILED is not None
    value = data[: len(data) // 2] + word + data[len(data) // 2 :]
    assert COMPILED.has_nonfinite(value) == PURE_PYTHON.has_nonfinite(value)


def test_redis_entries_become_messages_alike_in_both_cores() -> None:
    from streamq.brokers.redis.entries import decode_headers, encode_headers, entry_to_message

    entries = [
        (b"1700000000123-0", {b"v": b'{"a":1}', b"k": b"key", b"t": b"1699999999999"}),
        (b"1700000000123-7", {b"v": b"x", b"h": encode_headers([("h", b"1"), ("h", b"2")])}),
        (b"1700000000200-1", {}),  # trimmed away, redelivered from the pending list
        (b"1700000000300-2", {b"v": None, b"k": None}),
    ]
    shapes = []
    for convert in [c.redis_messages for c in CORES]:
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


def test_redis_entries_read_unparsed_give_the_same_messages_as_parsed_ones() -> None:
    """The consumer reads XREADGROUP as Redis sent it: flat field lists, nil when trimmed."""
    from streamq.brokers.redis.entries import decode_headers, encode_headers

    parsed = [
        (b"1700000000123-0", {b"v": b'{"a":1}', b"k": b"key", b"t": b"1699999999999"}),
        (b"1700000000123-7", {b"v": b"x", b"h": encode_headers([("h", b"1")])}),
        (b"1700000000200-1", None),  # trimmed away, redelivered from the pending list
        (b"1700000000300-2", {b"v": b"second"}),  # a repeated name: the last one wins
    ]
    flat = [
        [b"1700000000123-0", [b"v", b'{"a":1}', b"k", b"key", b"t", b"1699999999999"]],
        [b"1700000000123-7", [b"h", encode_headers([("h", b"1")]), b"v", b"x"]],
        [b"1700000000200-1", None],
        [b"1700000000300-2", [b"v", b"first", b"x", b"other", b"v", b"second"]],
    ]
    shapes = []
    for convert in [c.redis_messages for c in CORES]:
        for entries in (parsed, flat):
            delivered: list[int] = []
            trimmed: list = []
            out = convert("orders", 3, entries, delivered, trimmed, 20, decode_headers)
            shapes.append(([_fields(m) for m in out], delivered, trimmed))
    assert len(shapes) == 2 * len(CORES) and all(shape == shapes[0] for shape in shapes)
    assert shapes[0][2] == [b"1700000000200-1"] and len(shapes[0][0]) == 3


def test_unparsed_stream_replies_come_as_pairs_on_both_protocols() -> None:
    from streamq.brokers.redis.entries import stream_replies

    entries = [[b"1-0", [b"v", b"x"]]]
    assert list(stream_replies({b"t:0": entries})) == [(b"t:0", entries)]  # RESP3: a map
    assert list(stream_replies([[b"t:0", entries]])) == [[b"t:0", entries]]  # RESP2
    assert list(stream_replies(None)) == [] and list(stream_replies({})) == []
