"""Operator views of a log: bounds, times, group positions and members, ranged reads.

The replay, offsets, lag, tail and dlq commands are written once against ``LogView``; each
broker answers in its own terms from its ``view`` module (``kafka/view.py``,
``redis/view.py``), reached through ``Broker.view()``. ``open_view`` and ``read_topic`` are the
ways in from a URL.

An end is always "one past the last offset" and is found from offsets seen, never by
waiting for quiet: a read stops once it handled the record just before the end.

Offsets are integers inside streamq; people see and type them in the broker's own form
(``offset_text`` and its inverse ``offset_from_text``: Redis entry IDs, Kafka integers), so
whatever an output prints, an option takes back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..credentials import redact_url
from ..errors import ConfigError
from ..message import Message
from ..settings import Settings

__all__ = ["GroupPosition", "LogView", "integer_offset", "open_view", "read_topic"]

_ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")


@dataclass
class GroupPosition:
    """Where a group stands on one partition."""

    partition: int
    committed: int | None  # the next offset the group will read; None: nothing committed
    end: int
    pending: int | None = None  # Redis: delivered, not acknowledged
    records_behind: int | None = None  # where offsets are not dense (Redis): counted

    @property
    def lag(self) -> int | None:
        """Records between the committed position and the end."""
        if self.records_behind is not None:
            return self.records_behind
        return None if self.committed is None else max(0, self.end - self.committed)


class LogView(Protocol):
    """One broker's answers to the operator commands, in that broker's offsets."""

    def partitions(self, topic: str) -> list[int]:
        """Partition numbers of ``topic``; UnknownTopicOrPartition if there is no such topic."""

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition: (first offset, one past the last); equal when empty."""

    def offsets_for_time(self, topic: str, ms: int) -> dict[int, int | None]:
        """Per partition: the first offset at or after ``ms``; None when there is none."""

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        """Records in [start, end) of one partition."""

    def last_n_start(self, topic: str, partition: int, n: int) -> int:
        """The offset of the ``n``-th record from the end (the first offset if fewer)."""

    def positions(self, group: str, topic: str) -> list[GroupPosition]: ...

    def group_topics(self, group: str) -> list[str]:
        """Topics on which ``group`` has a position."""

    def members(self, group: str) -> list[str]:
        """Active members of ``group``, for refusing a reset under them."""

    def group_type(self, group: str) -> str:
        """``"share"`` or ``"classic"``: what a position and an owner mean differ.

        A share group's position is where its unfinished records start, and every member
        reads every partition.
        """

    def set_positions(self, group: str, topic: str, positions: dict[int, int]) -> None: ...

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""

    def groups(self) -> list[str]:
        """Consumer groups the broker knows of."""

    def owners(self, group: str, topic: str) -> dict[int, str]:
        """Partition -> the member that owns it now (absent: nobody, or the broker won't say)."""

    def read(
        self, topic: str, ranges: dict[int, tuple[int, int | None]], timeout: float = 0.2
    ) -> Iterator[list[Message]]:
        """Batches of records in [start, end) per partition; end None follows forever.

        An empty batch means nothing arrived within ``timeout``; the iterator ends once every
        bounded partition has been read to its end.
        """

    def read_topic(self, topic: str) -> Iterator[Message]:
        """Every record of ``topic``, up to its end when the read began, committing nothing."""

    def offset_text(self, offset: int) -> str:
        """An offset as people know it on this broker (on Redis, the entry ID ``ms-seq``)."""
        return str(offset)

    def offset_from_text(self, text: str) -> int:
        """The inverse of ``offset_text``: an offset as a person typed it.

        Raises:
            ValueError: ``text`` is no offset on this broker; the message says what is.
        """
        return integer_offset(text)

    def close(self) -> None: ...


def integer_offset(text: str) -> int:
    """An offset typed as a plain integer, the form of every broker but Redis."""
    if text.isascii() and text.isdigit():
        return int(text)
    if _ENTRY_ID.fullmatch(text):
        raise ValueError(f"{text} is a Redis entry ID; this broker's offsets are integers")
    raise ValueError(f"{text!r} is not an offset (an integer, 0 or more)")


def open_view(url: str, settings: Settings) -> LogView:
    """The operator view of the broker at ``url``; memory:// has none (it lives in one process)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "kafka":
        from .kafka import KafkaBroker

        return KafkaBroker(url, settings).view()
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, settings).view()
    if scheme == "memory":
        from .memory import NO_VIEW

        raise ConfigError(NO_VIEW)
    raise ConfigError(f"broker: unknown URL scheme in {redact_url(url)!r}")


def read_topic(url: str, topic: str, settings: Settings) -> Iterator[Message]:
    """Every record of ``topic`` on any broker, committing nothing: for DLQ tools and tests.

    Kafka reads to the high watermarks of the start, Redis to each stream's end as it pages,
    memory:// the in-process log (this process's only).
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("kafka", "redis", "rediss"):
        from .memory import read_log

        yield from read_log(url, topic)
        return
    view = open_view(url, settings)
    try:
        yield from view.read_topic(topic)
    finally:
        view.close()
