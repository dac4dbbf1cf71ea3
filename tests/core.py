"""streamq's per-record core, once per implementation: what the ``core`` fixture yields.

The core exists twice, the compiled ``streamq._dispatch`` and the pure-Python twins in
``streamq/{message,dispatch,offsets,murmur2,pipeline}.py``, ``runtime/{supervisor,outbox}.py`` and
``brokers/kafka/producer.py``, and streamq binds one of them at import
(``streamq._native``). A ``Core`` names every piece of one of them, so a test takes the piece
it exercises from whichever core it was given instead of importing a twin by its private
name; ``test_dispatch`` fails when the compiled module grows a piece this class does not
name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest

from streamq import _native, dispatch, message, murmur2, offsets, pipeline
from streamq.brokers.kafka import producer as kafka_producer
from streamq.runtime import outbox, supervisor

__all__ = ["COMPILED", "COMPILED_NAMES", "CORES", "NOT_TWINS", "PURE_PYTHON", "RUNNING", "Core"]

# Pieces the compiled module exports under another name than streamq binds them by.
COMPILED_NAMES = {"json_decoder": "JsonDecoder"}

# What the compiled module exports that has no twin of its own, and why.
NOT_TWINS = {
    "Invoker": "what the compiled make_invoker returns; the twin returns a closure",
    "bind_outputs": "hands the compiled outputs_of the types the twin imports",
}

# Where a record's class keeps its public identity during ``install``: users import it from
# here, and handlers compare their annotations with it (``hint is Message``).
_PUBLIC_MESSAGE = {"streamq", "streamq.message", "streamq.handlers"}


@dataclass(frozen=True)
class Core:
    """One implementation of the per-record core, a field per piece that has a twin."""

    name: str  # the test id: "cython" or "pure-python"
    Message: type
    PartitionOffsets: type
    Span: type
    span_of: Callable[[list[Any]], Any]
    Dispatcher: type
    Lease: type
    kafka_messages: Callable[..., list[Any]]
    redis_messages: Callable[..., list[Any]]
    bind_confluent: Callable[[type], bool]
    call_each: Callable[..., int]
    call_each_until: Callable[..., int]
    coordinate_keys: Callable[[list[Any]], list[str]]
    has_nonfinite: Callable[[bytes], bool]
    json_decoder: Callable[..., Callable[[Any], Any]]
    make_invoker: Callable[..., Callable[[Any], Any]]
    watch_parent: Callable[[int, float, int], None]
    Acks: type
    Relay: type
    murmur2: Callable[[bytes], int]
    outputs_of: Callable[..., list[Any]]
    partition_for_key: Callable[[bytes, int], int]

    @property
    def compiled(self) -> bool:
        return self.name == "cython"

    @property
    def param(self) -> Any:
        return pytest.param(self, id=self.name, marks=[pytest.mark.cython] if self.compiled else [])

    @classmethod
    def pieces(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "name"]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Run streamq on this core for one test, not just its dispatcher.

        Every binding in a loaded ``streamq`` module that holds a piece of the core streamq
        chose at import is pointed at this core's piece, records included, so a compiled
        piece left on the path meets a twin's record and raises (the compiled core takes
        only its own records). ``Message`` stays the public class where users see it.
        Spawned processes (``--workers``, the processes executor) import streamq afresh and
        pick their core from ``STREAMQ_NO_EXTENSIONS``, not from here.
        """
        swaps = {
            id(getattr(RUNNING, piece)): (piece, getattr(self, piece)) for piece in self.pieces()
        }
        for module_name, module in list(sys.modules.items()):
            if module_name.partition(".")[0] != "streamq" or module_name == "streamq._dispatch":
                continue
            for attr, value in list(vars(module).items()):
                piece, mine = swaps.get(id(value), (None, value))
                if mine is value or (piece == "Message" and module_name in _PUBLIC_MESSAGE):
                    continue
                monkeypatch.setattr(module, attr, mine)


PURE_PYTHON = Core(
    name="pure-python",
    Message=message._MessagePy,
    PartitionOffsets=offsets._PartitionOffsetsPy,
    Span=offsets._SpanPy,
    span_of=offsets._span_of_py,
    Dispatcher=dispatch._DispatcherPy,
    Lease=dispatch._LeasePy,
    kafka_messages=dispatch._kafka_messages_py,
    redis_messages=dispatch._redis_messages_py,
    bind_confluent=dispatch._bind_confluent_py,
    call_each=dispatch._call_each_py,
    call_each_until=dispatch._call_each_until_py,
    coordinate_keys=dispatch._coordinate_keys_py,
    has_nonfinite=dispatch._has_nonfinite_py,
    json_decoder=dispatch._json_decoder_py,
    make_invoker=dispatch._make_invoker_py,
    watch_parent=supervisor._watch_parent_py,
    Acks=outbox._AcksPy,
    Relay=kafka_producer._RelayPy,
    murmur2=murmur2._murmur2_py,
    outputs_of=pipeline._outputs_of_py,
    partition_for_key=murmur2._partition_for_key_py,
)

# None under STREAMQ_NO_EXTENSIONS=1: the cython param is then absent, not skipped.
COMPILED = (
    None
    if _native.native is None
    else Core(
        name="cython",
        **{p: getattr(_native.native, COMPILED_NAMES.get(p, p)) for p in Core.pieces()},
    )
)

CORES = [PURE_PYTHON] if COMPILED is None else [COMPILED, PURE_PYTHON]

# The core streamq bound at import: what ``install`` swaps out.
RUNNING = PURE_PYTHON if COMPILED is None else COMPILED
