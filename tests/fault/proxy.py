"""A TCP fault proxy between the workers and one broker port (RELIABILITY.md C4, C7).

Freezing or killing the broker (C1, C2) fails every client at once and the broker knows it;
a network fault does neither. Here the broker stays healthy while the wire between one client
and it misbehaves:

- ``pass``: bytes flow both ways.
- ``blackhole``: connections stay open and every byte is read and dropped, both ways, so the
  client sees neither an error nor an answer: only its own timeouts can save it.
- ``reset``: every open connection is closed with a TCP RST and new ones are reset at once.
- ``delay``: each chunk waits ``delay`` seconds before it is forwarded.

``drop_reply_after(marker)`` is one shot: the first server reply (with more than ``min_bytes``
bytes) to a request that contained ``marker`` is dropped and its connection reset. With
``XREADGROUP`` that is the lost reply of C7: the entries reached the consumer's PEL, the
consumer never saw them.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MODES = ("pass", "blackhole", "reset", "delay")


@dataclass
class Counters:
    """What the proxy did, so a test can first assert that its fault really happened."""

    accepted: int = 0
    forwarded: int = 0  # bytes, both ways
    blackholed: int = 0  # bytes read and dropped
    resets: int = 0  # connections closed with RST
    dropped_replies: list[bytes] = field(default_factory=list)


def _rst(sock: socket.socket) -> None:
    """Close with RST (linger 0) rather than FIN: what a middlebox or a dead peer does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Listens on ``port`` (a free one by default) and forwards to 127.0.0.1:``target``."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target = target
        self.mode = "pass"
        self.delay = 0.0
        self.counters = Counters()
        self._drop_marker: bytes | None = None
        self._drop_min = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self, mode: str, delay: float = 0.0) -> None:
        assert mode in MODES, mode
        with self._lock:
            self.mode, self.delay = mode, delay
            pairs = list(self._pairs) if mode == "reset" else []
        for pair in pairs:
            self._reset(pair)

    def drop_reply_after(self, marker: bytes, min_bytes: int = 64) -> None:
        with self._lock:
            self._drop_marker, self._drop_min = marker, min_bytes

    def close(self) -> None:
        self._closed = True
        _rst(self._listener)
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._reset(pair, count=False)

    # -- internals -------------------------------------------------------------------------

    def _reset(self, pair: tuple[socket.socket, socket.socket], count: bool = True) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.remove(pair)
            if count:
                self.counters.resets += 1
        for sock in pair:
            _rst(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.counters.accepted += 1
            if self.mode == "reset":
                self.counters.resets += 1
                _rst(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _rst(client)
                continue
            pair = (client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, server = pair
        armed = False  # the last request on this connection carried the drop marker
        while True:
            with self._lock:
                if pair not in self._pairs:
                    return
            try:
                readable, _, _ = select.select([client, server], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        self._reset(pair, count=False)
                        return
                    mode, delay = self.mode, self.delay
                    if mode == "blackhole":
                        self.counters.blackholed += len(data)
                        continue
                    if sock is client:
                        marker = self._drop_marker
                        armed = marker is not None and marker in data
                        other = server
                    else:
                        if armed and self._take_drop(data):
                            self._reset(pair)
                            return
                        other = client
                    if mode == "delay" and delay:
                        time.sleep(delay)
                    other.sendall(data)
                    self.counters.forwarded += len(data)
            except OSError:
                self._reset(pair, count=False)
                return

    def _take_drop(self, reply: bytes) -> bool:
        with self._lock:
            if self._drop_marker is None or len(reply) < self._drop_min:
                return False
            self._drop_marker = None
            self.counters.dropped_replies.append(reply)
            return True
