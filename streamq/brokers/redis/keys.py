"""Every Redis key streamq writes for a broker, named once.

Key layout (all names are plain strings; ``<g>`` group, ``<t>`` topic, ``<p>`` partition):

- ``<t>:<p>``                          the partition's stream. Entry fields: ``v`` value,
  ``k`` key, ``h`` headers (length-prefixed, byte-exact), ``t`` producer timestamp (ms).
- ``streamq:topic:<t>``                hash ``{partitions: P}``: written by ``topics create``
  (or the first producer), read by producers and consumers.
- ``streamq:members:<g>:<t>``          sorted set: member id -> heartbeat expiry (ms). Members
  compute the same assignment from the live ones: partition p goes to member p % n.
- ``streamq:lease:<g>:<t>:<p>``        string: the owner's token, ``SET NX PX``, renewed.
- ``streamq:state:<g>:<t>:<p>``        hash ``{offset, state}``: what the partition's owner
  saved with its lease (``lua/state.lua``), such as the schedule's last fired ticks.
- ``streamq:trimmed:<g>:<t>:<p>``      integer: entries of the partition trimmed before the
  group read them, so each loss is reported once, whichever member sees it.
- ``streamq:share:<g>``                 string ``1``: the group is a share group (written by its
  members when they join, removed by a classic member joining it empty), so ``status`` and
  ``lag`` say so and a member of the other type is refused while it has live members.

(``streamq.crashes`` and ``streamq.dedup`` keep their own keys, ``streamq:crash:`` and
``streamq:dedup:``, beside these.)
"""

from __future__ import annotations

from ...message import TopicPartition

__all__ = [
    "TOPIC_PREFIX",
    "lease_key",
    "members_key",
    "members_pattern",
    "share_key",
    "state_key",
    "stream_key",
    "topic_key",
    "trimmed_key",
]

TOPIC_PREFIX = "streamq:topic:"


def stream_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def topic_key(topic: str) -> str:
    return f"{TOPIC_PREFIX}{topic}"


def members_key(group: str, topic: str) -> str:
    return f"streamq:members:{group}:{topic}"


def members_pattern(group: str) -> str:
    """Every topic's member registry of ``group``, for SCAN."""
    return f"streamq:members:{group}:*"


def lease_key(group: str, tp: TopicPartition) -> str:
    return f"streamq:lease:{group}:{tp.topic}:{tp.partition}"


def state_key(group: str, tp: TopicPartition) -> str:
    return f"streamq:state:{group}:{tp.topic}:{tp.partition}"


def share_key(group: str) -> str:
    return f"streamq:share:{group}"


def trimmed_key(group: str, tp: TopicPartition) -> str:
    return f"streamq:trimmed:{group}:{tp.topic}:{tp.partition}"
