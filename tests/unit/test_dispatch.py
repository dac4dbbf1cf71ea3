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
