"""Redis Streams encodings that must round-trip exactly (no server needed)."""

from hypothesis import given
from hypothesis import strategies as st

from streamq.brokers.redis.entries import (
    decode_headers,
    encode_headers,
    id_to_offset,
    offset_to_id,
)


@given(
    ms=st.integers(min_value=0, max_value=2**43), seq=st.integers(min_value=0, max_value=2**20 - 1)
)
def test_entry_ids_map_to_ordered_offsets_and_back(ms: int, seq: int) -> None:
    entry = f"{ms}-{seq}"
    offset = id_to_offset(entry.encode())
    assert offset_to_id(offset) == entry
    assert id_to_offset(entry) == offset


def test_offsets_order_like_entry_ids() -> None:
    ids = ["1-0", "1-1", "1-1048575", "2-0", "10-3"]
    assert sorted(ids, key=id_to_offset) == ids


@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=100)), max_size=10))
def test_headers_round_trip_byte_exact_with_duplicates(headers: list[tuple[str, bytes]]) -> None:
    decoded = decode_headers(encode_headers(headers))
    assert (decoded or []) == headers
