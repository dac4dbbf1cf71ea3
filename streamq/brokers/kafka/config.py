"""``kafka://host:port[,host:port][?librdkafka.key=value...]``: each client's configuration.

Defaults streamq changes from librdkafka's, and why:

- ``enable.auto.commit=false`` and ``enable.auto.offset.store=false``: offsets are committed
  only after processing, explicitly. Turning either back on is refused (arroyo does the
  same), since librdkafka would then commit records that were fetched but never handled.
- ``partition.assignment.strategy=cooperative-sticky``: a rebalance moves only the partitions
  that change owner; the others keep flowing (KIP-429).
- ``fetch.queue.backoff.ms=10`` (default 1000): measured here, the default caps a drain at
  about 0.26M records/s; 10 ms lets the raw loop reach about 1.3M/s.
- ``fetch.wait.max.ms=100`` (default 500): how long the broker holds a fetch for partitions
  with no new records. librdkafka keeps one fetch per broker in flight, so a partition resumed
  after back-pressure waited behind a fetch of caught-up partitions: up to 1 s per pause at
  the end of a drain of 16 KB records here (a backlog of 60,000 from `streamq bench --size
  16000`: drained in 2.1-2.2 s, 1.1-1.8 s with 100). An idle member fetches ten times a
  second per broker.
- ``session.timeout.ms=10000`` (default 45000): a dead member's partitions move in seconds.
- ``max.poll.interval.ms=30000`` (default 300000): the poll thread never waits on handlers,
  only on a revoke's drain (``revoke_timeout``), so a short interval is safe; it must exceed
  ``revoke_timeout`` by 3 s, which is checked.
- ``queued.max.messages.kbytes``: a quarter of ``worker_max_in_flight_bytes`` (default 16 MB
  instead of 64 MB), so librdkafka's own prefetch counts inside the worker's memory bound.
- ``queued.min.messages=10000`` (default 100000 per partition): the byte cap above counts
  payloads only, and librdkafka holds about 250 bytes more per small record, so with small
  records the default let the prefetch alone take about 60 MB (a 1M backlog of 100-byte
  records: RSS +101 MB over idle; with 10000, +69 MB). Measured here, drains are no slower.
- Producer: ``enable.idempotence=true`` (no duplicates or reordering from retries),
  ``partitioner=murmur2_random`` (the Java client's partitioner, so keys land where every
  other Kafka client and streamq's other brokers put them), ``linger.ms=5``,
  ``message.timeout.ms=60000`` (a failed delivery surfaces within a minute).

Any other librdkafka setting passes through from ``Settings.kafka`` or the URL query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ...credentials import redact_url, remember_mapping
from ...errors import ConfigError
from ...settings import Settings
from ..base import Broker
from .admin import KafkaAdmin
from .client import check_client_version
from .consumer import KafkaConsumer
from .errors import client_log, on_error
from .producer import KafkaProducer
from .share import KafkaShareConsumer
from .view import KafkaView

__all__ = ["KafkaBroker"]

_REFUSED = {
    "enable.auto.commit": "streamq commits only after processing; auto-commit would commit "
    "records that were fetched but never handled",
    "enable.auto.offset.store": "streamq stores offsets only after processing",
}
_OWNED = {
    "bootstrap.servers": "put the brokers in the URL: kafka://host:port,host:port",
    "group.id": "the group comes from @app.handler(group=...) or the app name",
    "group.instance.id": "use the instance_id setting",
    "group.protocol": "use the group_protocol setting",
}
# Under KIP-848 the group coordinator owns these; librdkafka refuses the consumer otherwise.
_BROKER_SIDE_UNDER_KIP848 = {
    "session.timeout.ms": "group.consumer.session.timeout.ms",
    "heartbeat.interval.ms": "group.consumer.heartbeat.interval.ms",
    "partition.assignment.strategy": "group.consumer.assignors",
    "group.protocol.type": "group.consumer.assignors",
}


class KafkaBroker(Broker):
    """The URL and settings turned into each client's configuration; the clients' factory."""

    def __init__(self, url: str, settings: Settings) -> None:
        check_client_version()
        self.url = url
        self.settings = settings
        parts = urlsplit(url)
        userinfo, _, self.bootstrap = parts.netloc.rpartition("@")
        if not self.bootstrap:
            raise ConfigError(
                f"broker: {redact_url(url)!r} names no host; expected kafka://host:port"
            )
        options = dict(parse_qsl(parts.query)) | settings.kafka
        if userinfo:
            options |= self._sasl_login(userinfo, options)
        remember_mapping(options)
        self.passthrough = self._passthrough(options)

    @staticmethod
    def _sasl_login(userinfo: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``kafka://user:password@host`` as SASL settings.

        The user must choose the protocol: a default of SASL_PLAINTEXT would send the
        password in clear without anyone having decided so.
        """
        if "security.protocol" not in options or "sasl.mechanism" not in options:
            raise ConfigError(
                "broker: a kafka:// URL with user:password@ needs security.protocol "
                "(SASL_SSL, or SASL_PLAINTEXT on a trusted network) and sasl.mechanism "
                "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) in the URL's query or the kafka setting"
            )
        user, _, password = userinfo.partition(":")
        return {"sasl.username": unquote(user), "sasl.password": unquote(password)}

    @staticmethod
    def _passthrough(options: Mapping[str, Any]) -> dict[str, Any]:
        problems = []
        for key, value in options.items():
            if key in _REFUSED and str(value).lower() not in ("false", "0"):
                problems.append(f"kafka.{key}: refused: {_REFUSED[key]}")
            elif key in _OWNED:
                problems.append(f"kafka.{key}: set by streamq: {_OWNED[key]}")
            elif key.startswith("on_") or key in ("error_cb", "logger", "stats_cb"):
                problems.append(f"kafka.{key}: callbacks are owned by streamq")
        if problems:
            raise ConfigError(problems)
        return dict(options)

    def client_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "error_cb": on_error,
            "logger": client_log,
            **self.passthrough,
        }

    def consumer_config(self, group: str) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "group.id": group,
            "client.id": f"streamq-{group}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": s.auto_offset_reset,
            "enable.partition.eof": False,
            "fetch.queue.backoff.ms": 10,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": max(1024, s.worker_max_in_flight_bytes // 4096),
            "queued.min.messages": 10_000,
            "max.poll.interval.ms": 30_000,
        }
        if s.group_protocol == "consumer":
            config["group.protocol"] = "consumer"
            broker_side = [k for k in _BROKER_SIDE_UNDER_KIP848 if k in self.passthrough]
            if broker_side:
                raise ConfigError(
                    [f"kafka.{k}: not allowed with group_protocol='consumer' (KIP-848): the "
                     f"broker sets it ({_BROKER_SIDE_UNDER_KIP848[k]})" for k in broker_side]
                )  # fmt: skip
        else:
            config |= {
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 3_000,
            }
        if s.instance_id:
            config["group.instance.id"] = s.instance_id
        config |= self.client_config()
        floor = int((s.revoke_timeout + 3) * 1000)
        if int(config["max.poll.interval.ms"]) < floor:
            raise ConfigError(
                f"kafka.max.poll.interval.ms: {config['max.poll.interval.ms']} is too short for "
                f"revoke_timeout={s.revoke_timeout}s: the poll thread waits up to that long on a "
                f"revoke; use at least {floor}"
            )
        return config

    def producer_config(self) -> dict[str, Any]:
        return {
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "message.timeout.ms": 60_000,
        } | self.client_config()

    def consumer(self, group: str, settings: Settings) -> KafkaConsumer:
        return KafkaConsumer(self, group)

    def share_consumer(self, group: str, settings: Settings, round_size: int) -> KafkaShareConsumer:
        return KafkaShareConsumer(self, group, round_size)

    def share_consumer_config(self, group: str, round_size: int = 500) -> dict[str, Any]:
        """A ``ShareConsumer``'s: explicit acknowledgements, the client's own settings.

        Classic-group settings in ``kafka=`` (session, heartbeat, assignor) are left out: a
        share group takes them from the broker (``group.share.*``), and the same app may
        run classic groups that need them.
        """
        config = {k: v for k, v in self.client_config().items()
                  if k not in _BROKER_SIDE_UNDER_KIP848 and k != "group.protocol"}  # fmt: skip
        return {
            "group.id": group,
            "client.id": f"streamq-{group}",
            "share.acknowledgement.mode": "explicit",
            "max.poll.records": round_size,
        } | config

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def admin(self) -> KafkaAdmin:
        return KafkaAdmin(self)

    def view(self) -> KafkaView:
        return KafkaView(self)
