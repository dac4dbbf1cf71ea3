"""Share groups as the operator sees them, read over Kafka's own protocol (KIP-932 RPCs).

librdkafka (2.16) has a share consumer but no admin API for share groups: its
``describe_consumer_groups`` answers a share group as a dead classic group, and
``list_consumer_groups`` leaves it out. ``lag``, ``status`` and ``offsets reset`` need three
answers, so this module asks for them itself, one request each, on a short-lived socket:

- ``ListGroups`` (v5, types ``share``) to every broker: which share groups exist;
- ``FindCoordinator`` (v4) then ``ShareGroupDescribe`` (v1): state and members with their
  assignments;
- ``DescribeShareGroupOffsets`` (v0): each share-partition's start offset (SPSO), below which
  every record is acknowledged, released for good or archived.

Plain-text and TLS listeners are served (``security.protocol`` PLAINTEXT or SSL, with the
``ssl.*`` file settings); SASL listeners are refused with the command that answers instead
(``kafka-share-groups.sh``). Only what the three responses carry is decoded: the framing is
Kafka's flexible encoding (compact strings and arrays, tagged fields skipped).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import BrokerUnavailable, ConfigError

__all__ = ["ShareGroup", "ShareWire"]

_API_VERSIONS, _LIST_GROUPS, _FIND_COORDINATOR, _DESCRIBE, _OFFSETS = 18, 16, 10, 77, 90
_GROUP_ID_NOT_FOUND = 69
_UNSUPPORTED_VERSION = 35
_RETRIABLE = {14, 15, 16}  # coordinator loading, not available, not coordinator
_CLIENT_ID = b"streamq-ops"


@dataclass
class ShareGroup:
    """A share group: its state, its members, and each share-partition's start offset."""

    group: str
    state: str
    members: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # member: assignment
    start: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition): SPSO


class ShareWire:
    """One operator command's questions about share groups, over one socket per broker."""

    def __init__(self, bootstrap: str, config: Mapping[str, Any], timeout: float) -> None:
        protocol = str(config.get("security.protocol", "plaintext")).lower()
        self.sasl = protocol.startswith("sasl")
        self._tls: ssl.SSLContext | None = None
        if protocol == "ssl":
            self._tls = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
            if config.get("ssl.certificate.location"):
                self._tls.load_cert_chain(
                    config["ssl.certificate.location"], config.get("ssl.key.location")
                )
            if config.get("ssl.endpoint.identification.algorithm") == "none":
                self._tls.check_hostname = False
        self._bootstrap = [_host_port(b) for b in bootstrap.split(",") if b.strip()]
        self._timeout = timeout
        self._socks: dict[tuple[str, int], socket.socket] = {}
        self._correlation = 0
        self._versions: dict[int, int] | None = None  # api key: highest version served

    def share_groups(self, brokers: list[tuple[str, int]]) -> list[str]:
        """Every share group any of ``brokers`` coordinates (ListGroups v5, type filter)."""
        found: set[str] = set()
        if not brokers or not self._serves_shares(brokers[0]):
            return []
        for address in brokers:
            body = _Writer().compact_array([]).compact_array(["share"]).tags()
            r = self._call(address, _LIST_GROUPS, 5, body.data)
            r.int32()
            code = r.int16()
            if code == _UNSUPPORTED_VERSION:
                return []
            _check(code, "ListGroups")
            for _ in range(r.count()):
                group = r.string()
                r.string(), r.string(), r.string()  # protocol type, state, type
                r.tags()
                found.add(group)
        return sorted(found)

    def describe(self, group: str) -> ShareGroup | None:
        """The group's state, members and start offsets; None if it is not a share group.

        A coordinator that is loading or moving (a fresh cluster has none for any group
        until ``__consumer_offsets`` exists) is asked again until ``timeout``.
        """
        if not self._serves_shares(self._bootstrap[0]):
            return None  # a broker before 4.2: no share groups at all
        deadline = time.monotonic() + self._timeout
        delay = 0.1
        while True:
            try:
                return self._describe(group)
            except _Retriable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def _describe(self, group: str) -> ShareGroup | None:
        coordinator = self._coordinator(group)
        body = _Writer().compact_array([group]).bool(False).tags()
        r = self._call(coordinator, _DESCRIBE, 1, body.data)
        r.int32()
        r.count()  # one group asked, one answered
        code, message = r.int16(), r.nullable_string()
        if code in (_GROUP_ID_NOT_FOUND, _UNSUPPORTED_VERSION):
            return None  # not a share group; or share groups off (Kafka 4.1 advertises them)
        _check(code, f"ShareGroupDescribe {group}", message)
        r.string()
        out = ShareGroup(group, r.string())
        r.int32(), r.int32(), r.string()  # group epoch, assignment epoch, assignor
        for _ in range(r.count()):
            member = r.string()
            r.nullable_string(), r.int32()  # rack, epoch
            client, host = r.string(), r.string()
            for _ in range(r.count()):
                r.string()  # subscribed topics
            assignment: dict[str, list[int]] = {}
            for _ in range(r.count()):
                r.uuid()
                topic = r.string()
                assignment[topic] = [r.int32() for _ in range(r.count())]
                r.tags()
            r.tags()  # the assignment struct
            r.tags()
            out.members[f"{client}@{host} ({member})"] = assignment  # as classic members
        r.int32()
        r.tags()
        out.start = self._start_offsets(coordinator, group)
        return out

    def _start_offsets(
        self, coordinator: tuple[str, int], group: str
    ) -> dict[tuple[str, int], int]:
        body = _Writer().count(1).string(group).count(None).tags().tags()
        r = self._call(coordinator, _OFFSETS, 0, body.data)
        r.int32()
        out: dict[tuple[str, int], int] = {}
        for _ in range(r.count()):
            r.string()
            for _ in range(r.count()):
                topic = r.string()
                r.uuid()
                for _ in range(r.count()):
                    partition, start = r.int32(), r.int64()
                    r.int32()  # leader epoch
                    code, message = r.int16(), r.nullable_string()
                    r.tags()
                    if code == 0 and start >= 0:
                        out[(topic, partition)] = start
                    elif code:
                        _check(code, f"share offsets of {group} {topic}[{partition}]", message)
                r.tags()
            code, message = r.int16(), r.nullable_string()
            r.tags()
            if code != _GROUP_ID_NOT_FOUND:
                _check(code, f"DescribeShareGroupOffsets {group}", message)
        return out

    def _serves_shares(self, address: tuple[str, int]) -> bool:
        """Whether the broker knows the three requests (ApiVersions v0, the version all know).

        A broker closes the connection on a request version it does not know, so asking
        first is how an older cluster answers "no share groups" instead of failing.
        """
        if self._versions is None:
            r = self._call(address, _API_VERSIONS, 0, b"", flexible=False)
            _check(r.int16(), "ApiVersions")
            self._versions = {}
            for _ in range(r.int32()):
                api, _low, high = r.int16(), r.int16(), r.int16()
                self._versions[api] = high
        needed = {_LIST_GROUPS: 5, _FIND_COORDINATOR: 4, _DESCRIBE: 1, _OFFSETS: 0}
        return all(self._versions.get(api, -1) >= v for api, v in needed.items())

    def _coordinator(self, group: str) -> tuple[str, int]:
        body = _Writer().int8(0).compact_array([group]).tags()
        for address in self._bootstrap:
            try:
                r = self._call(address, _FIND_COORDINATOR, 4, body.data)
            except BrokerUnavailable:
                continue
            r.int32()
            r.count()
            r.string()
            node, host, port = r.int32(), r.string(), r.int32()
            code, message = r.int16(), r.nullable_string()
            _check(code, f"FindCoordinator {group}", message)
            del node
            return host, port
        raise BrokerUnavailable(f"kafka: no bootstrap broker answered ({self._bootstrap})")

    def _call(
        self, address: tuple[str, int], api: int, version: int, body: bytes, flexible: bool = True
    ) -> _Reader:
        if self.sasl:
            raise ConfigError(
                "share groups over a SASL listener: librdkafka has no share-group admin API "
                "and streamq reads them only over PLAINTEXT or SSL; use "
                "`kafka-share-groups.sh --describe --group G --offsets` instead"
            )
        self._correlation += 1
        header = struct.pack(">hhih", api, version, self._correlation, len(_CLIENT_ID))
        header += _CLIENT_ID + (b"\x00" if flexible else b"")  # header v2 has tags, v1 not
        try:
            sock = self._socks.get(address) or self._connect(address)
            request = header + body
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _read(sock, 4))[0]
            r = _Reader(_read(sock, size))
        except OSError as exc:
            self._drop(address)
            raise BrokerUnavailable(f"kafka: {address[0]}:{address[1]}: {exc}") from None
        if r.int32() != self._correlation:
            self._drop(address)
            raise BrokerUnavailable("kafka: a response answered another request")
        if flexible and api != _API_VERSIONS:
            r.tags()  # response header v1
        return r

    def _connect(self, address: tuple[str, int]) -> socket.socket:
        sock = socket.create_connection(address, timeout=self._timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=address[0])
        self._socks[address] = sock
        return sock

    def _drop(self, address: tuple[str, int]) -> None:
        sock = self._socks.pop(address, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for address in list(self._socks):
            self._drop(address)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _read(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _check(code: int, what: str, message: str | None = None) -> None:
    if code == 0:
        return
    text = f"kafka: {what} failed: error {code}" + (f" ({message})" if message else "")
    if code == _UNSUPPORTED_VERSION:
        raise ConfigError(f"{text}: share groups need Apache Kafka 4.2+")
    if code in _RETRIABLE:
        raise _Retriable(text)
    raise ConfigError(text)


class _Retriable(BrokerUnavailable):
    """The coordinator is loading, not there yet, or moved: ask again."""


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def int8(self, v: int) -> _Writer:
        self.data += struct.pack(">b", v)
        return self

    def bool(self, v: bool) -> _Writer:
        return self.int8(1 if v else 0)

    def uvarint(self, v: int) -> _Writer:
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        self.data += bytes(out)
        return self

    def count(self, n: int | None) -> _Writer:
        """A compact array's length (+1; 0 is null)."""
        return self.uvarint(0 if n is None else n + 1)

    def string(self, s: str) -> _Writer:
        raw = s.encode()
        self.count(len(raw))
        self.data += raw
        return self

    def compact_array(self, items: list[str]) -> _Writer:
        self.count(len(items))
        for s in items:
            self.string(s)
        return self

    def tags(self) -> _Writer:
        return self.uvarint(0)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def _take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise BrokerUnavailable("kafka: a response ended early (unexpected format)")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def uuid(self) -> bytes:
        return self._take(16)

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def count(self) -> int:
        return max(0, self.uvarint() - 1)

    def nullable_string(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self._take(n - 1).decode()

    def string(self) -> str:
        return self.nullable_string() or ""

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())
