"""``redis://host:port/db[?partitions=P]``: Redis Streams with Kafka-style partitions.

Why leases: a Redis consumer group alone hands one stream's entries to any member, which
breaks ordering. A member reads a partition only while it holds the lease; one that cannot
renew stops the partition at once (lanes check a local deadline before each handler). A new
owner first claims the partition's pending entries (XAUTOCLAIM) and handles them in ID order,
then reads new ones. Acknowledgements are fenced (``lua/ack.lua``): XACK names no consumer, so
only the lease holder's acks go through.

Modules: ``config`` (the URL, the client, partition counts), ``keys`` (every key name),
``entries`` (entry fields and IDs as offsets), ``consumer`` with ``trims``, ``producer``,
``admin``, ``view`` (for operators), ``errors``; the Lua scripts in ``lua/``.
"""

from __future__ import annotations

from .config import RedisBroker
from .entries import id_to_offset, offset_to_id

__all__ = ["RedisBroker", "id_to_offset", "offset_to_id"]
