"""The URL's settings, the client they make, and each topic's partition count."""

from __future__ import annotations

import itertools
import threading
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from ...credentials import redact_url, redis_client, scrub
from ...errors import BrokerUnavailable, ConfigError, UnknownTopicOrPartition
from ...message import TopicPartition
from ...murmur2 import partition_for_key
from ...settings import Settings
from ..base import Broker
from .admin import RedisAdmin
from .client import redis
from .consumer import RedisConsumer
from .errors import UNAVAILABLE
from .keys import stream_key, topic_key
from .producer import RedisProducer
from .share import RedisShareConsumer
from .view import RedisView

__all__ = ["RedisBroker"]


class RedisBroker(Broker):
    """The URL and settings turned into clients; the partition counts, cached."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.default_partitions = 4
        if "partitions" in query:
            raw = query.pop("partitions")[-1]
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(
                    f"{redact_url(url)}: partitions must be a positive integer, got {raw!r}"
                )
            self.default_partitions = int(raw)
        self._client_url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self._partitions: dict[str, int] = {}
        self._streams: dict[str, list[str]] = {}  # a topic's stream names, by partition
        self._lock = threading.Lock()
        self._round_robin = itertools.count(1)

    @property
    def client_url(self) -> str:
        """The URL without ``partitions``, which is streamq's and not redis-py's."""
        return self._client_url

    def client(self) -> redis.Redis:
        try:
            client: redis.Redis = redis_client(
                self.client_url,
                self.settings.redis_secret,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"broker: {scrub(str(exc))}") from None
        return client

    def partitions(self, client: redis.Redis, topic: str, *, create: bool) -> int:
        """Partition count of ``topic``, creating its metadata with the default if asked."""
        known = self._partitions.get(topic)  # a dict read is atomic: the lock guards writes
        if known is not None:
            return known
        key = topic_key(topic)
        try:
            if create:
                client.hsetnx(key, "partitions", self.default_partitions)
            raw = client.hget(key, "partitions")
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis at {redact_url(self.client_url)}: {exc}") from None
        if raw is None:
            raise UnknownTopicOrPartition(f"unknown topic {topic!r}")
        with self._lock:
            self._partitions[topic] = int(raw)
        return int(raw)

    def stream_for(
        self, client: redis.Redis, topic: str, key: bytes | None, partition: int | None = None
    ) -> str:
        """The stream a record goes to: Kafka's murmur2 partition of its key, else in turn."""
        streams = self._streams.get(topic)  # per record: the names are built once per topic
        if streams is None:
            count = self.partitions(client, topic, create=True)
            streams = [stream_key(TopicPartition(topic, p)) for p in range(count)]
            self._streams[topic] = streams
        count = len(streams)
        if partition is None:
            partition = (
                partition_for_key(key, count)
                if key is not None
                else next(self._round_robin) % count
            )
        elif not 0 <= partition < count:
            raise UnknownTopicOrPartition(
                f"{topic} has {count} partitions; no partition {partition}"
            )
        return streams[partition]

    def consumer(self, group: str, settings: Settings) -> RedisConsumer:
        return RedisConsumer(self, group)

    def share_consumer(self, group: str, settings: Settings, round_size: int) -> RedisShareConsumer:
        return RedisShareConsumer(self, group, round_size)

    def producer(self) -> RedisProducer:
        return RedisProducer(self)

    def admin(self) -> RedisAdmin:
        return RedisAdmin(self)

    def view(self) -> RedisView:
        return RedisView(self)
