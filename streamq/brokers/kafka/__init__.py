"""``kafka://host:port[,host:port][?librdkafka.key=value...]``: Apache Kafka via confluent-kafka.

Modules: ``config`` (the URL, streamq's librdkafka defaults and refusals), ``client`` (the
confluent-kafka import and type conversions), ``errors`` (translation into streamq's tree),
``consumer`` with ``liveness``, ``producer``, ``admin``, ``view`` (for operators).
"""

from __future__ import annotations

from .client import FIELD_READS
from .config import KafkaBroker

__all__ = ["FIELD_READS", "KafkaBroker"]
