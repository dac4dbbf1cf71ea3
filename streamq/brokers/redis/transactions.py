"""Exactly once on Redis: a commit's outputs and acknowledgements as one fenced script.

``lua/commit.lua`` checks every input partition's lease, then XADDs the outputs and XACKs the
inputs below the commit positions. Redis runs a script alone and a member that lost a lease
writes nothing, so the outputs of an input appear if and only if it is acknowledged. A
script is atomic only on one node: on a Redis Cluster all the pipeline's streams must share a
hash tag (``{orders}:0``-style topic names), which streamq does not do for you.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ... import failpoints
from ...errors import BrokerUnavailable, CommitFailed
from ...logs import get_logger
from ...message import TopicPartition
from .client import ResponseError
from .entries import entry_fields
from .errors import UNAVAILABLE
from .keys import lease_key, stream_key

if TYPE_CHECKING:
    from ...dispatch import Lease
    from ...pipeline import Output
    from .config import RedisBroker

__all__ = ["Owned", "Transactions"]

log = get_logger("streamq.redis")


class Owned(Protocol):
    """A held partition (``consumer._Owned``): its lease and the entries not acknowledged."""

    lease: Lease

    def below(self, position: int) -> list[bytes]: ...

    def take(self, position: int) -> list[bytes]: ...


class Transactions:
    """The exactly-once commit of one group member (poll thread only)."""

    def __init__(self, broker: RedisBroker, client: Any, group: str, script: Any) -> None:
        self._broker = broker
        self._r = client
        self._group = group
        self._commit = script
        self._maxlen = broker.settings.redis_maxlen

    def commit(
        self,
        owned: Mapping[TopicPartition, Owned],
        offsets: Mapping[TopicPartition, int],
        outputs: Sequence[Output],
    ) -> list[TopicPartition]:
        """Run the script; returns the partitions whose lease was found gone.

        Then nothing was written, and the caller notes them as lost and raises CommitFailed.
        """
        tps = list(offsets)
        missing = [tp for tp in tps if tp not in owned]
        if missing:
            raise CommitFailed(f"group {self._group}: no longer owns {sorted(missing)}")
        acks = [owned[tp].below(offsets[tp]) for tp in tps]
        try:
            out_keys = [
                self._broker.stream_for(self._r, o.topic, o.key, o.partition) for o in outputs
            ]
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        keys = [lease_key(self._group, tp) for tp in tps] + [stream_key(tp) for tp in tps]
        args: list[Any] = [self._group, len(tps), self._maxlen or ""]
        args += [owned[tp].lease.token for tp in tps]
        args += [len(ids) for ids in acks]
        for ids in acks:
            args += ids
        for out in outputs:
            fields = entry_fields(out.value, out.key, out.headers)
            args.append(2 * len(fields))
            for name, value in fields.items():
                args += (name, value)
        if failpoints.ACTIVE and outputs:  # counts transactions that publish something
            failpoints.hit("in_transaction")
        try:
            result = self._commit(keys=keys + out_keys, args=args)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: commit script: {exc}") from None
        except ResponseError as exc:
            raise CommitFailed(f"group {self._group}: commit script refused: {exc}") from None
        if result == 0:
            for tp in tps:
                owned[tp].take(offsets[tp])
            return []
        bad = -int(result) - 1
        if bad < len(tps):
            tp = tps[bad]
            log.warning(
                "group %s: lease on %s[%d] is gone (expired, or Redis lost it): the commit "
                "published nothing; whoever owns it next handles those entries",
                self._group, tp.topic, tp.partition,
            )  # fmt: skip
            return [tp]
        key = out_keys[bad - len(tps)]
        raise CommitFailed(
            f"group {self._group}: output stream {key} holds something that is not a stream; "
            "nothing was published or acknowledged, and the commit waits until it is fixed"
        )
