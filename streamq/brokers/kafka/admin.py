"""Topics, and the broker-side settings a member must know (KIP-848 group timeouts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from ...logs import get_logger
from ..base import Admin
from .client import AdminClient, KafkaError, KafkaException, NewTopic
from .errors import translate, wait_for_broker

if TYPE_CHECKING:
    from .config import KafkaBroker

__all__ = ["KafkaAdmin", "group_timeouts"]

log = get_logger("streamq.kafka")


def group_timeouts(broker: KafkaBroker, config: dict[str, Any], group: str) -> tuple[float, float]:
    """Session and heartbeat interval: the client's, or under KIP-848 the broker's."""
    if config.get("group.protocol") != "consumer":
        return float(config["session.timeout.ms"]), float(config["heartbeat.interval.ms"])
    found = {"group.consumer.session.timeout.ms": 45000.0,
             "group.consumer.heartbeat.interval.ms": 5000.0}  # fmt: skip
    try:
        from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

        admin = AdminClient(broker.client_config())
        meta = admin.list_topics(timeout=5)
        resource = ConfigResource(ConfigResource.Type.BROKER, str(next(iter(meta.brokers))))
        entries = admin.describe_configs([resource])[resource].result(5)
        for name in found:
            if name in entries and entries[name].value:
                found[name] = float(entries[name].value)
    except Exception as exc:  # the defaults are safe: a longer stall goes unnoticed
        log.debug("group %s: broker group timeouts unknown (%s)", group, exc)
    return (found["group.consumer.session.timeout.ms"],
            found["group.consumer.heartbeat.interval.ms"])  # fmt: skip


class KafkaAdmin(Admin):
    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker
        self._admin = AdminClient(broker.client_config())
        self._timeout = broker.settings.broker_timeout

    def create_topic(self, name: str, partitions: int, *, compact: bool = False) -> None:
        self._reachable()
        config = {"cleanup.policy": "compact"} if compact else {}
        topic = NewTopic(name, partitions, config=config)
        futures = self._admin.create_topics([topic], request_timeout=15)
        try:
            futures[name].result(self._timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigError(f"topic {name!r} already exists") from None
            raise translate(exc, f"create topic {name}") from None

    def list_topics(self) -> dict[str, int]:
        self._reachable()
        meta = self._admin.list_topics(timeout=self._timeout)
        return {
            name: len(t.partitions) for name, t in meta.topics.items() if not name.startswith("__")
        }

    def topic_exists(self, name: str) -> bool:
        # a client of its own that logs nothing: asked every few seconds through an outage,
        # it must not add a line per reconnect to what the worker's own clients say
        config = {k: v for k, v in self._broker.client_config().items() if k != "error_cb"}
        quiet = AdminClient(config | {"log_level": 0})
        meta = quiet.list_topics(name, timeout=5)
        topic = meta.topics.get(name)
        return topic is not None and topic.error is None

    def _reachable(self) -> None:
        wait_for_broker(
            lambda t: self._admin.list_topics(timeout=t),
            self._broker.bootstrap,
            self._timeout,
        )

    def close(self) -> None:
        pass
