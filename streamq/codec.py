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

from .errors import ConfigError, DecodeError, SchemaError
from .message import Headers

__all__ = ["Decoder", "encode_headers", "encode_key", "encode_value", "make_decoder"]

Decoder = Callable[[bytes | None], Any]


def encode_value(value: Any) -> bytes | None:
    """Bytes as they are, str as UTF-8, pydantic models and JSON-able data through orjson."""
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


def make_decoder(tp: Any) -> Decoder:
    """Build the decoder for one handler's payload type, once, at registration."""
    adapter: TypeAdapter[Any] = TypeAdapter(tp)
    validate = adapter.validate_python
    loads = orjson.loads

    def decode(value: bytes | None) -> Any:
        if value is None:
            raise DecodeError("null value (tombstone) where a payload was expected")
        try:
            obj = loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        try:
            return validate(obj)
        except ValidationError as exc:
            raise SchemaError(summarize_validation(exc)) from None

    return decode


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
