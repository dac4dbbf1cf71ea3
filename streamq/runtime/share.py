"""Share groups in the runtime (``group_type="share"``): what differs from a classic group.

A share group's backend (``Backend.share``) reads every partition with the other members,
in rounds, and acknowledges each record on its own; the rest of the runtime is the classic
one with ``ordering="none"``. Two things are its own:

- The committer commits after every completion: a commit is how records are acknowledged,
  and the next round is read only once the last one is acknowledged.
- A record the broker delivers a third time (``Message.attempt`` > 2: its members died with
  it twice, or ran past the visibility timeout) runs alone, like a suspect of the crash
  counter (``streamq.crashes``), and is dead-lettered as ``WorkerLost`` once ``crash_limit``
  of those lone runs died too: the broker's delivery count does the counting, no crash
  store. The round size keeps what a member holds near what it runs: what it took and had
  not started is redelivered with the rest when it dies.
"""

from __future__ import annotations

import math
import threading

from ..brokers.base import Backend, Broker
from ..errors import ConfigError
from ..handlers import GroupType, HandlerSpec
from ..logs import get_logger
from ..message import Message, TopicPartition
from ..settings import Settings
from .lanes import Probe

__all__ = [
    "consumer_for",
    "halt_share_member",
    "is_share_group",
    "lone_runs_allowed",
    "redelivered_units",
]

log = get_logger("streamq.worker")


def is_share_group(specs: dict[str, HandlerSpec]) -> bool:
    return any(spec.group_type is GroupType.SHARE for spec in specs.values())


def consumer_for(
    broker: Broker, group: str, settings: Settings, specs: dict[str, HandlerSpec]
) -> Backend:
    """The group's member: a share group's says first what it cannot do."""
    if not is_share_group(specs):
        return broker.consumer(group, settings)
    if settings.guarantee == "exactly_once":
        raise ConfigError(
            f"group {group!r}: guarantee='exactly_once' needs a classic group (a share "
            "group's acknowledgements cannot join a transaction)"
        )
    # the least a round takes: what the handlers run at once, twice over (Round grows it
    # up to max_poll_records while rounds end quickly)
    wanted = 2 * sum(spec.concurrency for spec in specs.values())
    return broker.share_consumer(group, settings, max(1, min(settings.max_poll_records, wanted)))


def lone_runs_allowed(settings: Settings) -> float:
    """Lone runs of a redelivered record that may die before it is dead-lettered."""
    return settings.crash_limit if settings.crash_limit > 0 else math.inf


def redelivered_units(msgs: list[Message]) -> list[list[Message]]:
    """``msgs`` in order as units: each record delivered twice before alone, the rest in runs.

    A member's death redelivers everything it held, mostly innocent records: the first
    redelivery runs with the others. A record that comes a third time was held at two
    deaths: it runs alone, a ``Probe`` whose count is its lone runs so far.
    """
    units: list[list[Message]] = []
    run: list[Message] = []
    for msg in msgs:
        if msg.attempt > 2:
            if run:
                units.append(run)
                run = []
            units.append(Probe(msg, msg.attempt - 3))
        else:
            run.append(msg)
    if run:
        units.append(run)
    return units


def halt_share_member(group: str, tp: TopicPartition, stop: threading.Event) -> None:
    """A record that could be neither handled nor dead-lettered stops this member.

    A classic member halts the one partition and goes on with the others; a share member
    reads in rounds, and its next round waits for every record of this one. So it stops
    (exit 4, not restarted by the supervisor), handing the record back unacknowledged:
    the other members meet it in turn and stop too, and it waits in the group, with the
    records after it, for a fixed deploy. Its delivery count still grows with each
    member that takes it: Kafka gives it up (archived, not dead-lettered) at
    ``group.share.delivery.count.limit``, 5 by default; Redis keeps it pending.
    """
    log.error(
        "group %s: a record of %s[%d] could be neither handled nor dead-lettered; a share "
        "group member cannot step past it, so this member stops (exit 4) and hands it back",
        group, tp.topic, tp.partition,
    )  # fmt: skip
    stop.set()
