"""Payload encoding for producers and decoding for handlers.

Decoding is two steps on purpose: orjson parses (failure is a ``DecodeError``), then pydantic
validates the parsed object (failure is a ``SchemaError``). Keeping them apart lets the DLQ say
which one went wrong, and neither ever reaches the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from .dispatch import has_nonfinite, json_decoder
from .errors import ConfigError, DecodeError, SchemaError
from .message import Headers

__all__ = ["Decoder", "encode_headers", "encode_key", "encode_value", "make_decoder"]

Decoder = Callable[[bytes | None], Any]

_dumps = orjson.dumps


def encode_value(value: Any) -> bytes | None:
    """Bytes as they are, str as UTF-8, pydantic models and JSON-able data through orjson."""
    kind = type(value)
    if kind is dict or kind is list:  # a handler's usual output, per record: no isinstance
        try:
            return _dumps(value)
        except TypeError as exc:
            raise ConfigError(f"value: cannot encode {kind.__name__} as JSON ({exc})") from exc
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, BaseModel):
        return orjson.dumps(value.model_dump(mode="json"))
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise ConfigError(f"value: cannot encode {type(value).__name__} as JSON ({exc})") from exc


def encode_key(key: bytes | str | int | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str | int):
        return str(key).encode()
    raise ConfigError(f"key: expected bytes, str, int or None, got {type(key).__name__}")


def encode_headers(
    headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]] | None,
) -> Headers | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), v.encode() if isinstance(v, str) else bytes(v)) for k, v in items]


# Payload types that need no validation beyond what JSON already guarantees: the parsed
# object only has to be of the right kind. orjson alone is three times faster than pydantic.
_PLAIN: dict[Any, type | None] = {
    Any: None,
    object: None,
    dict: dict,
    dict[str, Any]: dict,
    list: list,
    list[Any]: list,
}


def make_decoder(tp: Any) -> Decoder:
    """Build the decoder for one handler's payload type, once, at registration.

    Plain JSON types get orjson and a type check; everything else is parsed and validated in
    one pass by pydantic-core (``validate_json``), about a third cheaper than orjson followed
    by ``validate_python``. A parse failure is still a DecodeError, distinct from a
    SchemaError.
    """
    loads = orjson.loads
    if tp in _PLAIN:
        kind = _PLAIN[tp]
        return json_decoder(kind, _describe_mismatch(kind))

    adapter: TypeAdapter[Any] = TypeAdapter(tp)
    # pydantic-core's validator itself: TypeAdapter's own methods add about 1 us of Python
    # per call (measured with `streamq bench --handler pydantic`)
    core = getattr(adapter, "validator", None)
    validate_json = getattr(core, "validate_json", adapter.validate_json)
    validate_python = getattr(core, "validate_python", adapter.validate_python)
    nonfinite = has_nonfinite

    def decode(value: bytes | None) -> Any:
        if value is None:
            raise DecodeError("null value (tombstone) where a payload was expected")
        try:
            if nonfinite(value):
                # pydantic-core's parser takes these literals, orjson (strict JSON) does not;
                # the slow path keeps one JSON dialect whichever the payload type.
                try:
                    obj = loads(value)
                except orjson.JSONDecodeError as jexc:
                    raise DecodeError(f"invalid JSON: {jexc}") from None
                return validate_python(obj)
            return validate_json(value)
        except ValidationError as exc:
            if exc.error_count() and exc.errors(include_url=False)[0]["type"] == "json_invalid":
                try:  # say what orjson says: the message users know
                    loads(value)
                except orjson.JSONDecodeError as jexc:
                    raise DecodeError(f"invalid JSON: {jexc}") from None
                raise DecodeError(f"invalid JSON: {exc.errors()[0]['msg']}") from None
            raise SchemaError(summarize_validation(exc)) from None

    return decode


_JSON_NAMES: dict[type, str] = {dict: "object", list: "array"}


def _describe_mismatch(kind: type | None) -> Callable[[Any], str]:
    expected = _JSON_NAMES.get(kind, "value") if kind is not None else "value"
    return lambda obj: f"1 validation error: expected a JSON {expected}, got {_json_kind(obj)}"


def _json_kind(obj: Any) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    return names.get(type(obj), type(obj).__name__)


def summarize_validation(exc: ValidationError, limit: int = 5) -> str:
    """One line per field problem, with its path: short enough for a DLQ header."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return f"{exc.error_count()} validation error(s) for {exc.title}: " + "; ".join(parts)
