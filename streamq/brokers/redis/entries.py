"""Stream entries as records: the entry fields, and entry IDs as integer offsets.

Offsets: an entry ID ``ms-seq`` maps to the integer ``ms << 20 | seq``, so the worker's offset
tracker orders Redis entries exactly like Kafka offsets. People see the entry ID
(``offset_to_id``) and may type either form (``offset_from_text``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from ...message import Headers, Message

__all__ = [
    "SEQ_BITS",
    "decode_headers",
    "encode_headers",
    "entry_fields",
    "entry_to_message",
    "id_text",
    "id_to_offset",
    "offset_from_text",
    "offset_to_id",
    "read_unparsed",
    "stream_replies",
]

SEQ_BITS = 20
_SEQ_MASK = (1 << SEQ_BITS) - 1


def read_unparsed(client: Any) -> None:
    """Have ``client`` return XREADGROUP replies as Redis sent them (``stream_replies``).

    redis-py turns every entry's field list into a dict (and, on RESP3, converts the reply
    to its RESP2 shape first): in the Redis consumer's poll that was about a third of the
    poll thread. ``redis_messages`` reads the flat field lists itself, in the compiled core.
    The callback is the client's own, so only that client's reads change.
    """
    client.set_response_callback("XREADGROUP", _as_sent)


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def stream_replies(reply: Any) -> Iterable[tuple[Any, list[Any]]]:
    """(stream key, entries) of an unparsed XREADGROUP reply: a map on RESP3, pairs on RESP2."""
    if not reply:
        return ()
    pairs: Iterable[tuple[Any, list[Any]]] = reply.items() if isinstance(reply, dict) else reply
    return pairs


def id_to_offset(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return (int(ms) << SEQ_BITS) | int(seq or 0)


def offset_to_id(offset: int) -> str:
    return f"{offset >> SEQ_BITS}-{offset & _SEQ_MASK}"


def offset_from_text(text: str) -> int:
    """An offset as a person typed it: the entry ID, or the integer ``--json`` output carries.

    Unlike ``id_to_offset``, which reads IDs Redis gave out, this checks the text: a sequence
    number wider than ``SEQ_BITS`` would silently carry into the millisecond.

    Raises:
        ValueError: ``text`` is neither; the message shows the entry ID form.
    """
    if text.isascii() and text.isdigit():
        return int(text)
    ms, dash, seq = text.partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        raise ValueError(
            f"{text!r} is not an entry ID (MS-SEQ, as 1764590000000-3) or its integer form"
        )
    if int(seq) > _SEQ_MASK:
        raise ValueError(f"{text}: streamq's offsets hold sequence numbers up to {_SEQ_MASK}")
    return id_to_offset(text)


def entry_fields(
    value: bytes | None,
    key: bytes | None,
    headers: Headers | None,
    timestamp: int | None = None,
) -> dict[str, bytes]:
    """A record as the fields of its stream entry (the layout is in ``keys``)."""
    fields: dict[str, bytes] = {}
    if value is not None:
        fields["v"] = value
    if key is not None:
        fields["k"] = key
    if headers:
        fields["h"] = encode_headers(headers)
    if timestamp is not None:
        fields["t"] = str(timestamp).encode()
    if not fields:
        fields["v0"] = b""  # XADD needs one field: a tombstone with no key
    return fields


def encode_headers(headers: Headers) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw = name.encode()
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">I", len(value)) + value
    return bytes(out)


def decode_headers(blob: bytes | None) -> Headers | None:
    if not blob:
        return None
    out: Headers = []
    i = 0
    while i < len(blob):
        (n,) = struct.unpack_from(">H", blob, i)
        name = blob[i + 2 : i + 2 + n].decode()
        i += 2 + n
        (m,) = struct.unpack_from(">I", blob, i)
        out.append((name, blob[i + 4 : i + 4 + m]))
        i += 4 + m
    return out


def entry_to_message(topic: str, partition: int, entry_id: bytes, fields: Any) -> Message:
    """One stream entry as a Message; the timestamp is the producer's, else the ID's ms."""
    offset = id_to_offset(entry_id)
    stamp = fields.get(b"t")
    return Message(
        topic, partition, offset, fields.get(b"k"), fields.get(b"v"),
        decode_headers(fields.get(b"h")),
        int(stamp) if stamp is not None else offset >> SEQ_BITS,
    )  # fmt: skip


def id_text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
