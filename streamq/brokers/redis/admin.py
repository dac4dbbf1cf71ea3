"""Topics (a metadata hash per topic) and a group's counters per partition.

``group_infos`` is the one place a group's progress is read from Redis (XINFO GROUPS): the
worker's lag samples, ``RedisAdmin.lag`` and the operator view's positions all go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from ...message import TopicPartition
from ..base import Admin
from .client import redis
from .errors import wait_for_redis
from .keys import TOPIC_PREFIX, stream_key, topic_key

if TYPE_CHECKING:
    from .config import RedisBroker

__all__ = ["RedisAdmin", "group_infos"]


def group_infos(
    r: redis.Redis, group: str, tps: Sequence[TopicPartition]
) -> list[dict[Any, Any] | None]:
    """``group``'s XINFO GROUPS entry per partition, in one pipeline; None without one.

    A missing stream or group is None; a connection error raises (callers translate it).
    Redis >= 7 reports ``lag`` (entries not yet delivered; None where it cannot tell, after
    trims) and ``pending`` (delivered, not acknowledged).
    """
    pipe = r.pipeline(transaction=False)
    for tp in tps:
        pipe.xinfo_groups(stream_key(tp))
    out: list[dict[Any, Any] | None] = []
    for infos in pipe.execute(raise_on_error=False):
        mine = None
        if not isinstance(infos, Exception):
            mine = next((i for i in infos if i["name"] in (group, group.encode())), None)
        out.append(mine)
    return out


class RedisAdmin(Admin):
    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._r = broker.client()

    def create_topic(self, name: str, partitions: int, *, compact: bool = False) -> None:
        wait_for_redis(self._r, self._broker.client_url, self._broker.settings.broker_timeout)
        if not self._r.hsetnx(topic_key(name), "partitions", partitions):
            raise ConfigError(f"topic {name!r} already exists")

    def lag(self, group: str, topic: str) -> dict[TopicPartition, tuple[int | None, int]]:
        """Per partition: (entries not yet delivered to the group, delivered but unacked).

        From XINFO GROUPS; the first is None where Redis cannot tell (after XDEL/trims).
        """
        count = self._broker.partitions(self._r, topic, create=False)
        tps = [TopicPartition(topic, p) for p in range(count)]
        infos = group_infos(self._r, group, tps)
        return {
            tp: (info.get("lag"), info["pending"]) if info is not None else (None, 0)
            for tp, info in zip(tps, infos, strict=True)
        }

    def topic_exists(self, name: str) -> bool:
        return bool(self._r.exists(topic_key(name)))

    def list_topics(self) -> dict[str, int]:
        wait_for_redis(self._r, self._broker.client_url, self._broker.settings.broker_timeout)
        out = {}
        for key in self._r.scan_iter(match=f"{TOPIC_PREFIX}*", count=500):
            name = key.decode().removeprefix(TOPIC_PREFIX)
            raw = self._r.hget(key, "partitions")
            if raw is not None:
                out[name] = int(raw)
        return out

    def close(self) -> None:
        self._r.close()
