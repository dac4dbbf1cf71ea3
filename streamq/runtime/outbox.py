"""Outputs of handled records, held against their inputs until the commit may pass them.

A lane's handler returns ``Out`` records (``streamq.pipeline``); its lane-bound ``invoke``
(``bind``) encodes them in the handler's call and puts them here under the input's
coordinates and the lane's ownership epoch. The committer, on the poll thread, asks the
outbox before every commit:

- at least once: outputs are published at once, counted in the current *generation*; each
  commit closes the generation and queues the positions it saw. Those positions may be
  committed once every output of their generation and the ones before was acknowledged
  (the producer's thread counts acks; no future per record, no waiting on the lanes' side).
  A refused output is published again, and the group's partitions pause until it is in.
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
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._native import native
from ..brokers.base import Backend, Broker, ProducerBackend
from ..delays import ensure_delay_topic, envelope
from ..errors import ConfigError
from ..handlers import CommitMode, HandlerSpec
from ..logs import get_logger
from ..message import Message, TopicPartition
from ..offsets import OffsetTracker
from ..pipeline import Output, outputs_of
from ..settings import Settings

__all__ = ["Outbox", "check_exactly_once", "outbox_for"]

log = get_logger("streamq.worker")

# exactly once: (partition, epoch, input offset, its outputs)
Put = tuple[TopicPartition, int, int, list[Output]]


class _AcksPy:
    """The compiled ``Acks``'s twin: the same counts, under a lock."""

    __slots__ = ("_lock", "acked", "refused", "sent")

    def __init__(self, refused: deque[tuple[BaseException, Output]]) -> None:
        self.sent = 0
        self.acked = 0
        self.refused = refused
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.sent += n

    def __call__(self, exc: BaseException | None, out: Output | None) -> None:
        if exc is None:
            with self._lock:
                self.acked += 1
        else:
            self.refused.append((exc, out))  # type: ignore[arg-type]


Acks: Any = _AcksPy
if native is not None:
    Acks = native.Acks


class _Generation:
    """At least once: outputs published between two commits, and their acknowledgements.

    A lane counts its outputs in the generation it finds current, with no lock against the
    commit that closes it: an input's completion is reported after its outputs were counted,
    so a closed generation's positions never pass an input whose outputs it does not count
    (counted one generation early, they only hold that commit until they are in).
    """

    __slots__ = ("delivered", "refused", "troubled")

    def __init__(self) -> None:
        self.refused: deque[tuple[BaseException, Output]] = deque()
        self.troubled = False  # an output was refused: until it is in, partitions pause
        # lanes add to it; the producer's thread calls it per output (memory://: the lanes'
        # threads); one object per generation, so the producer caches what it wraps it in
        self.delivered = Acks(self.refused)

    @property
    def waiting(self) -> int:
        """Outputs not acknowledged yet, refused ones included."""
        acks = self.delivered
        return max(0, acks.sent - acks.acked) + len(self.refused)  # type: ignore[no-any-return]

    @property
    def done(self) -> bool:
        acks = self.delivered
        return acks.acked >= acks.sent and not self.refused


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
        delay_topic: str | None = None,
        ensure_delay_topic: Callable[[], None] | None = None,
    ) -> None:
        self._group = group
        self._delay_topic = delay_topic
        self._ensure_delay_topic = ensure_delay_topic
        self._delay_topic_ready = False
        self._at = offset_text
        self._producer = producer
        self._tracker = tracker
        self._lock = threading.Lock()
        self._generation = _Generation()
        # closed generations, each with the positions (and their epochs) it may release
        self._closed: deque[tuple[_Generation, dict[TopicPartition, tuple[int, int]]]] = deque()
        self.exactly_once = exactly_once
        self._incoming: deque[Put] = deque()  # appends and pops are atomic: no lock
        self._held: dict[TopicPartition, dict[int, list[Output]]] = {}
        self._taken: list[tuple[TopicPartition, int]] = []
        self.refused: set[TopicPartition] = set()  # with an output the broker refused

    # -- lanes (event loop, pool threads) -------------------------------------------------------

    def bind(self, spec: HandlerSpec, tp: TopicPartition, epoch: int) -> HandlerSpec:
        """``spec`` for one lane: its calls put their outputs here under ``(tp, epoch)``."""
        put = self._put

        def sink(msg: Message, outputs: list[Output]) -> None:
            put(tp, epoch, msg.offset, outputs)

        return dataclasses.replace(spec, invoke=self._bound(spec, sink, tp, epoch), sink=sink)

    def _bound(
        self,
        spec: HandlerSpec,
        sink: Callable[[Message, list[Output]], None],
        tp: TopicPartition,
        epoch: int,
    ) -> Any:
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
        if not every:  # at least once: straight to the producer, per record (no sink call)
            send = self._send
            if spec.is_async:

                async def send_async(msg: Message) -> None:
                    result = await inner(msg)
                    if result is not None:
                        send(outputs_of(result, msg.key, allowed))

                return send_async

            def send_sync(msg: Message) -> None:
                result = inner(msg)
                if result is not None:
                    send(outputs_of(result, msg.key, allowed))

            return send_sync
        # exactly once: held under the input's coordinates (sink's work, without its frames)
        hold, route = self._incoming.append, self._route
        if spec.is_async:

            async def one_async(msg: Message) -> None:
                outputs = outputs_of(await inner(msg), msg.key, allowed)
                hold((tp, epoch, msg.offset, route(outputs)))

            return one_async

        def one_sync(msg: Message) -> None:
            outputs = outputs_of(inner(msg), msg.key, allowed)
            hold((tp, epoch, msg.offset, route(outputs)))

        return one_sync

    def _put(self, tp: TopicPartition, epoch: int, offset: int, outputs: list[Output]) -> None:
        if self.exactly_once:
            self._incoming.append((tp, epoch, offset, self._route(outputs)))
        elif outputs:
            self._send(outputs)

    def _send(self, outputs: list[Output]) -> None:
        """At least once: publish now, counted in the current generation."""
        outputs = self._route(outputs)
        acks = self._generation.delivered  # no lock: see _Generation
        acks.add(len(outputs))
        try:
            self._producer.publish(outputs, acks)
        except BaseException:  # it queued none of them (publish's contract): none will report
            acks.add(-len(outputs))
            raise

    def _route(self, outputs: list[Output]) -> list[Output]:
        """Delayed outputs go to the delay topic instead (a loop: no generator per record)."""
        for o in outputs:
            if o.due is not None:
                return [o if o.due is None else self._delayed(o) for o in outputs]
        return outputs

    def _delayed(self, out: Output) -> Output:
        """A delayed output goes to the delay topic, created at the first one."""
        if self._delay_topic is None:
            raise ConfigError("Out(delay=...): this outbox has no delay topic")
        if not self._delay_topic_ready:
            with self._lock:
                if not self._delay_topic_ready and self._ensure_delay_topic is not None:
                    self._ensure_delay_topic()
                self._delay_topic_ready = True
        return envelope(out, self._delay_topic)

    # -- the committer (poll thread) -----------------------------------------------------------

    def _drain(self) -> None:
        parts = self._tracker.parts
        incoming = self._incoming
        while incoming:
            tp, epoch, offset, outputs = incoming.popleft()
            part = parts.get(tp)
            if part is None or part.epoch != epoch:
                continue  # that ownership ended: the next owner handles the input again
            self._held.setdefault(tp, {})[offset] = outputs

    def gate(self, positions: dict[TopicPartition, int], wait: float = 0.0) -> None:
        """At least once: replace ``positions`` with those whose outputs are all acknowledged.

        Closes the current generation with ``positions``, then releases the newest closed
        positions whose generation and all before it are done (possibly none yet: they are
        committed by a later call). ``wait`` seconds are spent waiting for that (a
        synchronous commit: a revoke, a stop).
        """
        parts = self._tracker.parts
        closing, self._generation = self._generation, _Generation()  # lanes take no lock
        self._closed.append(
            (closing, {tp: (parts[tp].epoch, p) for tp, p in positions.items() if tp in parts})
        )
        deadline = time.monotonic() + wait
        released: dict[TopicPartition, tuple[int, int]] = {}
        while True:
            self._publish_refused()
            while self._closed and self._closed[0][0].done:
                released.update(self._closed.popleft()[1])
            if not self._closed or time.monotonic() >= deadline:
                break
            time.sleep(0.005)  # the producer's thread is counting acknowledgements
        positions.clear()
        for tp, (epoch, position) in released.items():
            part = parts.get(tp)
            if part is not None and part.epoch == epoch:  # still this member's, same epoch
                positions[tp] = position
        self.refused = set(parts) if any(g.troubled for g, _ in self._closed) else set()

    def _publish_refused(self) -> None:
        """Publish refused outputs again, counted in the generation they belong to."""
        told = False
        for generation, _ in self._closed:
            refused = generation.refused
            generation.troubled = generation.troubled or bool(refused)
            while refused:
                exc, out = refused.popleft()
                if not told:
                    log.warning(  # once per commit, however many were refused
                        "group %s: output to %s was refused (%s); publishing it again; the "
                        "group's partitions pause and their commits wait until it is in",
                        self._group, out.topic, exc,
                    )  # fmt: skip
                    told = True
                self._producer.publish([out], generation.delivered)

    def take(self, positions: dict[TopicPartition, int]) -> list[Output]:
        """Exactly once: the outputs of inputs below ``positions``, in input order."""
        self._drain()
        out: list[Output] = []
        taken = self._taken
        taken.clear()
        extend, took = out.extend, taken.append
        for tp, position in positions.items():
            held = self._held.get(tp)
            if not held:
                continue
            for offset in sorted(held):  # ints: a C sort, no generator per commit
                if offset >= position:
                    break
                extend(held[offset])
                took((tp, offset))
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
        """What is not out yet: unacknowledged outputs, or inputs whose outputs wait."""
        if not self.exactly_once:
            generations = [g for g, _ in self._closed] + [self._generation]
            return sum(g.waiting for g in generations)
        self._drain()
        return sum(len(h) for h in self._held.values())


def outbox_for(
    group: str,
    specs: dict[str, HandlerSpec],
    backend: Backend,
    producer: ProducerBackend,
    tracker: OffsetTracker,
    settings: Settings,
    broker: Broker | None = None,
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
        delay_topic=settings.delay_topic,
        ensure_delay_topic=(
            None if broker is None else functools.partial(ensure_delay_topic, broker, settings)
        ),
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
