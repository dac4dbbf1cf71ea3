import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from streamq.codec import encode_headers, encode_key, encode_value, make_decoder
from streamq.errors import ConfigError, DecodeError, SchemaError


class Order(BaseModel):
    id: int
    amount: float


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int


def test_encode_value_kinds() -> None:
    assert encode_value(b"raw") == b"raw"
    assert encode_value("héllo") == "héllo".encode()
    assert encode_value({"a": [1, 2]}) == b'{"a":[1,2]}'
    assert encode_value([1, "x"]) == b'[1,"x"]'
    assert encode_value(Order(id=1, amount=2.5)) == b'{"id":1,"amount":2.5}'
    assert encode_value(None) is None


def test_encode_value_rejects_unserialisable() -> None:
    with pytest.raises(ConfigError, match="cannot encode"):
        encode_value({"x": object()})


def test_encode_key_and_headers() -> None:
    assert encode_key("k") == b"k"
    assert encode_key(7) == b"7"
    assert encode_key(None) is None
    with pytest.raises(ConfigError):
        encode_key(1.5)  # type: ignore[arg-type]
    assert encode_headers({"a": "x", "b": b"\xff"}) == [("a", b"x"), ("b", b"\xff")]
    assert encode_headers([("a", b"1"), ("a", b"2")]) == [("a", b"1"), ("a", b"2")]


def test_decode_valid() -> None:
    assert make_decoder(Order)(b'{"id": 3, "amount": 1}') == Order(id=3, amount=1.0)
    assert make_decoder(dict)(b'{"a": 1}') == {"a": 1}
    assert make_decoder(list[int])(b"[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe{}",  # invalid UTF-8
        b"",  # empty
        b"\xef\xbb\xbf{}",  # BOM prefix
        b'{"id": NaN}',  # NaN literal
        b"[" * 10_000 + b"]" * 10_000,  # 10k-deep nesting
        b'{"a": 1, "a"',  # truncated
        None,  # tombstone
    ],
    ids=["garbage", "bad-utf8", "empty", "bom", "nan", "deep", "truncated", "tombstone"],
)
def test_undecodable_is_decode_error(payload: bytes | None) -> None:
    with pytest.raises(DecodeError):
        make_decoder(Order)(payload)


@pytest.mark.parametrize(
    ("tp", "payload"),
    [
        (Order, b'{"id": "x", "amount": 1}'),  # wrong type
        (Order, b'{"id": 1}'),  # missing field
        (Strict, b'{"id": 1, "extra": 2}'),  # extra field under forbid
        (Order, b"[1, 2]"),  # wrong shape
        (Order, b'{"id": 1180591620717411303424, "amount": 1}'),  # 2**70 does not fit int?
    ],
    ids=["wrong-type", "missing", "extra-forbid", "shape", "bigint"],
)
def test_schema_invalid_is_schema_error(tp: type, payload: bytes) -> None:
    try:
        result = make_decoder(tp)(payload)
    except SchemaError as exc:
        assert "validation error" in str(exc)
    except DecodeError:
        pass  # orjson refuses integers past 64 bits: also poison, also fine
    else:
        # pydantic accepts big Python ints; then it must really be the big int
        assert result.id == 2**70


def test_schema_error_names_the_field() -> None:
    with pytest.raises(SchemaError, match=r"id: Input should be a valid integer"):
        make_decoder(Order)(b'{"id": "x", "amount": 1}')


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    decode = make_decoder(Order)
    try:
        result = decode(data)
    except (DecodeError, SchemaError):
        return
    assert isinstance(result, Order)


def test_the_words_nan_and_infinity_inside_strings_are_fine() -> None:
    """Payloads mentioning them take the orjson path; only the bare literals are refused."""

    class Note(BaseModel):
        text: str
        x: float

    decode = make_decoder(Note)
    assert decode(b'{"text": "NaN and Infinity", "x": 1.5}') == Note(text="NaN and Infinity", x=1.5)
    with pytest.raises(DecodeError):
        decode(b'{"text": "ok", "x": Infinity}')


def test_a_key_given_twice_is_accepted_and_the_last_value_wins() -> None:
    """E1, decided: the behaviour of Python's json, orjson and pydantic, pinned on both paths
    (plain types through orjson, models through pydantic-core) so they cannot drift apart."""

    class Priced(BaseModel):
        id: int
        amount: float

    assert make_decoder(dict)(b'{"id": 1, "id": 7}') == {"id": 7}
    assert make_decoder(Priced)(b'{"id": 1, "amount": 2.5, "id": 7}') == Priced(id=7, amount=2.5)
