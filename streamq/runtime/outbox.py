"""Outputs of handled records, held against their inputs until the commit may pass them.

A lane's handler returns ``Out`` records (``streamq.pipeline``); its lane-bound ``invoke``
(``bind``) encodes them in the handler's call and puts them here under the input's
coordinates and the lane's ownership epoch. The committer, on the poll thread, asks the
outbox before every commit:

- at least once: outputs were sent at once; ``gate`` lowers each partition's commit position
  to the first input whose outputs are not acknowledged yet, and sends again an output the
  broker refused. Nothing waits on the lanes' side, so producing costs no latency there.
- exactly once: outputs were only held; ``take`` hands the committer those of inputs below
  the commit position, in input order, and the broker publishes them with the position in
  one transaction (Kafka) or one fenced script (Redis). ``settle`` drops them once that
  committed; after a failure they stay and go into the next attempt.

Entries of an epoch that ended (a revoke, a lost partition) are dropped: the next owner
handles those inputs again, and under exactly once publishes their outputs itself. Under
exactly once every handled input of a producing handler leaves an entry, outputs or not, so
a late entry of an old epoch can never stand in for the new one's (the newer replaces it).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

from ..brokers.base import Backend, ProducerBackend, RecordMetadata
from ..errors import ConfigError
from ..handlers import CommitMode, HandlerSpec
from ..logs import get_logger
from ..message import Message, TopicPartition
from ..offsets import OffsetTracker
from ..pipeline import Output, outputs_of
from ..settings import Settings

__all__ = ["Outbox", "check_exactly_once", "outbox_for"]

log = get_logger("streamq.worker")

# (partition, epoch, input offset, its outputs, their sends: None under exactly once)
Put = tuple[TopicPartition, int, int, list[Output], list["Future[RecordMetadata]"] | None]


@dataclasses.dataclass(slots=True)
class _Held:
    outputs: list[Output]
    sends: list[Future[RecordMetadata]] | None
    tries: int = 1


class Outbox:
    """One group member's outputs (lanes put from any thread; the rest is the poll thread's)."""

    def __init__(
        self,
        group: str,
        producer: ProducerBackend,
        tracker: OffsetTracker,
        *,
        exactly_once: bool,
        offset_text: Callable[[int], str] = str,
    ) -> None:
        self._group = group
        self._at = offset_text
        self._producer = producer
        self._tracker = tracker
        self.exactly_once = exactly_once
        self._incoming: deque[Put] = deque()  # appends and pops are atomic: no lock
        self._held: dict[TopicPartition, dict[int, _Held]] = {}
        self._taken: list[tuple[TopicPartition, int]] = []
        self.refused: set[TopicPartition] = set()  # with an output the broker refused

    # -- lanes (event loop, pool threads) -------------------------------------------------------

    def bind(self, spec: HandlerSpec, tp: TopicPartition, epoch: int) -> HandlerSpec:
        """``spec`` for one lane: its calls put their outputs here under ``(tp, epoch)``."""
        put = self._put

        def sink(msg: Message, outputs: list[Output]) -> None:
            put(tp, epoch, msg.offset, outputs)

        return dataclasses.replace(spec, invoke=self._bound(spec, sink), sink=sink)

    def _bound(self, spec: HandlerSpec, sink: Callable[[Message, list[Output]], None]) -> Any:
        inner = spec.invoke
        every = self.exactly_once  # an entry per input, even without outputs (see above)
        allowed = spec.outputs
        if spec.batch:
            if spec.is_async:

                async def batch_async(batch: list[Message]) -> None:
                    sink(batch[-1], outputs_of(await inner(batch), None, allowed))

                return batch_async

            def batch_sync(batch: list[Message]) -> None:
                sink(batch[-1], outputs_of(inner(batch), None, allowed))

            return batch_sync
        if spec.is_async:

            async def one_async(msg: Message) -> None:
                result = await inner(msg)
                if result is not None or every:
                    sink(msg, outputs_of(result, msg.key, allowed))

            return one_async

        def one_sync(msg: Message) -> None:
            result = inner(msg)
            if result is not None or every:
                sink(msg, outputs_of(result, msg.key, allowed))

        return one_sync

    def _put(self, tp: TopicPartition, epoch: int, offset: int, outputs: list[Output]) -> None:
        sends = None
        if not self.exactly_once:
            if not outputs:
                return
            send = self._producer.send
            sends = [send(o.topic, o.value, o.key, o.headers) for o in outputs]
        self._incoming.append((tp, epoch, offset, outputs, sends))

    # -- the committer (poll thread) -----------------------------------------------------------

    def _drain(self) -> None:
        parts = self._tracker.parts
        incoming = self._incoming
        while incoming:
            tp, epoch, offset, outputs, sends = incoming.popleft()
            part = parts.get(tp)
            if part is None or part.epoch != epoch:
                continue  # that ownership ended: the next owner handles the input again
            self._held.setdefault(tp, {})[offset] = _Held(outputs, sends)

    def gate(self, positions: dict[TopicPartition, int], wait: float = 0.0) -> None:
        """At least once: lower each position to the first input with outputs not yet acked.

        ``wait`` seconds are spent waiting for acknowledgements first (a synchronous commit:
        a revoke, a stop). ``positions`` is changed in place.
        """
        self._drain()
        if wait > 0:
            pending = [
                f
                for tp in positions
                for held in self._held.get(tp, {}).values()
                for f in held.sends or ()
                if not f.done()
            ]
            if pending:
                wait_futures(pending, timeout=wait)
        for tp, position in positions.items():
            held = self._held.get(tp)
            self.refused.discard(tp)
            if not held:
                continue
            first_open = position
            for offset in sorted(o for o in held if o < position):
                entry = held[offset]
                if self._settled(tp, offset, entry):
                    del held[offset]
                elif offset < first_open:
                    first_open = offset
                if entry.tries > 1 and offset in held:
                    self.refused.add(tp)
            positions[tp] = first_open

    def _settled(self, tp: TopicPartition, offset: int, entry: _Held) -> bool:
        """All of an input's outputs acknowledged; a refused one is sent again."""
        sends = entry.sends
        assert sends is not None
        settled = True
        for i, fut in enumerate(sends):
            if not fut.done():
                settled = False
            elif fut.exception() is not None:
                settled = False
                out = entry.outputs[i]
                if tp not in self.refused and (entry.tries == 1 or entry.tries % 10 == 0):
                    log.warning(  # once per partition and commit, however many are refused
                        "group %s: output to %s of %s[%d]@%s was refused (%s); sending it "
                        "again; the partition pauses and its commit waits until delivered",
                        self._group, out.topic, tp.topic, tp.partition, self._at(offset),
                        fut.exception(),
                    )  # fmt: skip
                    self.refused.add(tp)
                entry.tries += 1
                sends[i] = self._producer.send(out.topic, out.value, out.key, out.headers)
        return settled

    def take(self, positions: dict[TopicPartition, int]) -> list[Output]:
        """Exactly once: the outputs of inputs below ``positions``, in input order."""
        self._drain()
        out: list[Output] = []
        taken = self._taken
        taken.clear()
        for tp, position in positions.items():
            held = self._held.get(tp)
            if not held:
                continue
            for offset in sorted(o for o in held if o < position):
                out.extend(held[offset].outputs)
                taken.append((tp, offset))
        return out

    def settle(self) -> None:
        """The last ``take`` committed: its outputs are published."""
        for tp, offset in self._taken:
            held = self._held.get(tp)
            if held is not None:
                held.pop(offset, None)
        self._taken.clear()

    def forget(self, tps: list[TopicPartition]) -> None:
        """Ownership of ``tps`` ended: their held outputs belong to the next owner's run."""
        self._drain()
        for tp in tps:
            self._held.pop(tp, None)
            self.refused.discard(tp)

    def waiting(self) -> int:
        """Inputs whose outputs are not yet acknowledged or committed (for idle checks)."""
        self._drain()
        return sum(len(h) for h in self._held.values())


def outbox_for(
    group: str,
    specs: dict[str, HandlerSpec],
    backend: Backend,
    producer: ProducerBackend,
    tracker: OffsetTracker,
    settings: Settings,
) -> Outbox | None:
    """The group's outbox, if any handler may produce or the guarantee is exactly once."""
    exactly_once = settings.guarantee == "exactly_once"
    if exactly_once:
        check_exactly_once(group, specs, backend)
    elif not any(s.produces for s in specs.values()):
        return None
    return Outbox(
        group,
        producer,
        tracker,
        exactly_once=exactly_once,
        offset_text=backend.offset_text,
    )


def check_exactly_once(group: str, specs: dict[str, HandlerSpec], backend: Backend) -> None:
    """What ``guarantee="exactly_once"`` cannot serve is refused before anything is read."""
    problems = []
    if not backend.transactional:
        problems.append(
            f"group {group}: guarantee='exactly_once' needs a broker that commits outputs "
            "with offsets (Kafka, Redis, memory://)"
        )
    problems.extend(
        f"handler {spec.name}: commit='before' (at most once) contradicts guarantee='exactly_once'"
        for spec in specs.values()
        if spec.commit is CommitMode.BEFORE
    )
    if problems:
        raise ConfigError(problems)
