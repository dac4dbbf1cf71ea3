"""The dispatch core: split a polled batch into ordered units.

A unit is the records of one partition (``ordering="partition"``) or of one key lane inside a
partition (``ordering="key"``), in log order. At most one unit per partition or lane runs at a
time, which is what keeps order; different units run concurrently.

Two implementations behave identically: ``ext/_dispatch.pyx`` compiled to
``streamq._dispatch``, and ``_DispatcherPy`` below. The choice is made once, at the bottom of
this module; ``STREAMQ_NO_EXTENSIONS=1`` forces the twin. ``IMPLEMENTATION`` says which one
runs, and tests run both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol

from .message import Message, TopicPartition

__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "Dispatcher", "DispatcherProtocol"]

NO_EXTENSIONS = bool(os.environ.get("STREAMQ_NO_EXTENSIONS"))


class DispatcherProtocol(Protocol):
    def split(self, batch: list[Message]) -> dict[TopicPartition, list[Message]]:
        """Group a batch by partition, keeping each partition's records in batch order."""

    def split_keys(self, msgs: list[Message], lanes: int) -> dict[int, list[Message]]:
        """Group one partition's records by key lane, keeping order within each lane."""


class _DispatcherPy:
    """The pure-Python twin of ``streamq._dispatch.Dispatcher``."""

    def split(self, batch: list[Message]) -> dict[TopicPartition, list[Message]]:
        out: dict[TopicPartition, list[Message]] = {}
        current: list[Message] = []
        topic: str | None = None
        partition = -1
        for m in batch:
            # Brokers return runs of one partition: look the list up only when the run changes.
            if m.partition != partition or m.topic != topic:
                topic = m.topic
                partition = m.partition
                tp = TopicPartition(topic, partition)
                found = out.get(tp)
                if found is None:
                    found = out[tp] = []
                current = found
            current.append(m)
        return out

    def split_keys(self, msgs: list[Message], lanes: int) -> dict[int, list[Message]]:
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        out: dict[int, list[Message]] = {}
        for m in msgs:
            lane = 0 if m.key is None else hash(m.key) % lanes
            found = out.get(lane)
            if found is None:
                found = out[lane] = []
            found.append(m)
        return out


IMPLEMENTATION: Literal["cython", "python"]
Dispatcher: type[DispatcherProtocol]

if TYPE_CHECKING or NO_EXTENSIONS:
    Dispatcher = _DispatcherPy
    IMPLEMENTATION = "python"
else:
    try:
        from ._dispatch import Dispatcher as _DispatcherC
    except ImportError:  # no compiler at install time: the twin behaves identically
        Dispatcher = _DispatcherPy
        IMPLEMENTATION = "python"
    else:
        Dispatcher = _DispatcherC
        IMPLEMENTATION = "cython"
