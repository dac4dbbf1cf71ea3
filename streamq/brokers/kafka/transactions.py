"""Exactly once on Kafka: one transactional producer per group member (KIP-447).

Each commit is one transaction: the outputs of the inputs below the commit positions, then
the positions themselves (``send_offsets_to_transaction`` with the consumer's group
metadata), then ``commit_transaction``. The group coordinator checks that metadata, so a
member the group has moved on from (a zombie: frozen past its session, then woken) has its
transaction refused and aborted, and none of its outputs becomes visible to read_committed
readers. Because a transaction is open only for the length of one commit, its
``transactional.id`` needs no stable identity: a member that dies mid-commit leaves a
transaction the broker aborts after ``transaction.timeout.ms`` (10 s here, not Kafka's 60 s,
since readers of the outputs wait behind it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ... import failpoints
from ...errors import CommitFailed, MemberFenced
from ...logs import get_logger
from ...message import TopicPartition
from .client import KafkaError, KafkaException, ck, to_ck
from .producer import produce_each

if TYPE_CHECKING:
    from ...pipeline import Output
    from .config import KafkaBroker

__all__ = ["Transactions"]

log = get_logger("streamq.kafka")

TRANSACTION_TIMEOUT_MS = 10_000


class Transactions:
    """The transactional producer of one group member (poll thread only)."""

    def __init__(self, broker: KafkaBroker, group: str, instance_id: str | None) -> None:
        self._group = group
        suffix = instance_id or uuid.uuid4().hex[:12]
        config = broker.producer_config() | {
            "transactional.id": f"streamq-{group}-{suffix}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "message.timeout.ms": TRANSACTION_TIMEOUT_MS,  # librdkafka: at most the above
        }
        config |= {k: v for k, v in broker.passthrough.items() if k.startswith("transaction")}
        self._timeout = broker.settings.broker_timeout
        self._producer: Any = ck.Producer(config)
        self._ready = False

    def commit(
        self,
        consumer: Any,
        offsets: Mapping[TopicPartition, int],
        outputs: Sequence[Output],
    ) -> None:
        """Publish ``outputs`` and commit ``offsets`` in one transaction, or neither."""
        producer = self._producer
        try:
            if not self._ready:
                producer.init_transactions(self._timeout)
                self._ready = True
            producer.begin_transaction()
            produce_each(producer, outputs)  # no delivery reports: the commit tells
            producer.send_offsets_to_transaction(
                [to_ck(tp, offset) for tp, offset in offsets.items()],
                consumer.consumer_group_metadata(),
                self._timeout,
            )
            self._producer.flush(self._timeout)  # commit_transaction would wait for it too
            if failpoints.ACTIVE and outputs:  # counts transactions that publish something
                failpoints.hit("in_transaction")
            self._commit_transaction()
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.fatal():
                raise MemberFenced(
                    f"group {self._group}: the transactional producer was fenced or failed "
                    f"fatally ({err.str()}); this member stops without committing, and its "
                    "uncommitted inputs are handled again by the group"
                ) from None
            self._abort()
            raise CommitFailed(
                f"group {self._group}: transaction aborted ({exc}); its outputs were not "
                "published and go into the next commit"
            ) from None

    def _commit_transaction(self) -> None:
        """A retriable failure (a timeout) is retried: the outcome is then still open."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._producer.commit_transaction(self._timeout)
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and err.retriable()
                if not retriable or time.monotonic() >= deadline:
                    raise

    def _abort(self) -> None:
        if not self._ready:
            return
        try:
            self._producer.abort_transaction(self._timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._STATE:
                return  # no transaction was open
            log.warning("group %s: aborting the transaction failed: %s", self._group, exc)

    def close(self) -> None:
        """Nothing is left open between commits; flush only what the client still holds."""
        self._producer.flush(1.0)
