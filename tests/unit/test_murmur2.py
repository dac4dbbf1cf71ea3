import confluent_kafka
from hypothesis import given
from hypothesis import strategies as st

from streamq.murmur2 import partition_for_key


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=1000))
def test_partition_matches_confluent_kafka(key: bytes, partitions: int) -> None:
    assert partition_for_key(key, partitions) == confluent_kafka.murmur2(key, partitions)


def test_known_vectors() -> None:
    # Values from the Java client's DefaultPartitioner, as librdkafka reproduces them.
    assert [partition_for_key(b"hello", n) for n in (4, 7)] == [1, 4]
    assert [partition_for_key(b"", n) for n in (4, 7)] == [1, 2]
