"""The schedule: one member of the group fires each job's ticks, the others wait to take over.

Every worker of an app with ``@app.every`` jobs runs a ``Scheduler`` thread with its own
consumer in the group ``<app>.schedule``, subscribed to the one-partition topic of the same
name. The member that owns partition 0 is the schedule's owner: on Kafka the group
coordinator says who (the commit of a member that lost it is refused), on Redis the
partition's lease. So whether one worker runs or fifty, one member fires each tick; there is
no beat process to run exactly once of, and no lock beside the broker.

Claim, then fire. Before a tick runs, the owner stores it as the job's last fired tick with
its ownership (``Backend.save_state``: Kafka commit metadata, Redis a lease-checked script).
A member that lost the partition while frozen gets a refusal and fires nothing; an heir
reads the state first, so it never fires a tick its predecessor claimed. A tick is therefore
fired at most once: a crash in the middle of a run does not run it again (a job that must
finish makes itself idempotent, and checks what its tick already did). Ticks that fell due
while no one owned the schedule follow the job's ``missed`` policy, and a tick that falls
due during its job's previous run its ``overlap``.

Operators steer the schedule through the same topic: ``streamq schedules pause|resume|
trigger`` append a command record there, which only the owner reads; the position after the
last command it applied is saved with the state, so a command is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .. import logs
from ..brokers import ensure_topic
from ..errors import BrokerError, CommitFailed, ConfigError, MemberFenced
from ..message import Message, TopicPartition
from ..schedules import JobSpec, Missed, Overlap, Tick

if TYPE_CHECKING:
    from ..brokers.base import Backend, Broker
    from ..settings import Settings
    from ..stats import Stats

__all__ = ["JobState", "ScheduleState", "Scheduler", "schedule_topic"]

log = logs.get_logger("streamq.schedule")

# Kafka keeps commit metadata up to offset.metadata.max.bytes (4096 by default).
MAX_STATE_BYTES = 4000
# The loop wakes at least this often: polls drive heartbeats, and commands must be seen.
MAX_WAIT = 0.5


def poll_until(
    consumer: Backend, max_records: int, wait: float, stop: threading.Event
) -> list[Message]:
    """Poll for up to ``wait`` seconds, waking on time for a deadline nearer than ``MAX_WAIT``.

    Brokers time a blocking read out coarsely (Redis on its next cron tick, 1/hz s), so for
    a near deadline this polls without blocking and sleeps here instead.
    """
    if wait >= MAX_WAIT:
        return consumer.poll_batch(max_records, wait)
    records = consumer.poll_batch(max_records, 0)
    if not records:
        stop.wait(wait)
    return records


def schedule_topic(app_name: str) -> str:
    """The schedule's topic, and the consumer group of the members that compete for it."""
    return f"{app_name}.schedule"


@dataclass
class JobState:
    last: int  # ms: the last tick claimed (fired, or skipped by a policy)
    fired_at: int = 0  # ms: when the owner fired it
    paused: bool = False


@dataclass
class ScheduleState:
    """What the owner saves with its ownership; ``applied``: the next command's offset."""

    owner: str = ""
    since: int = 0
    applied: int = 0
    jobs: dict[str, JobState] = field(default_factory=dict)

    def encode(self) -> str:
        jobs = {n: [j.last, j.fired_at, int(j.paused)] for n, j in self.jobs.items()}
        doc = {"v": 1, "o": self.owner, "s": self.since, "a": self.applied, "j": jobs}
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, raw: str | None, offset: int | None) -> ScheduleState:
        if not raw:
            return cls(applied=offset or 0)
        try:
            doc = orjson.loads(raw)
            jobs = {n: JobState(int(v[0]), int(v[1]), bool(v[2])) for n, v in doc["j"].items()}
            return cls(str(doc["o"]), int(doc["s"]), int(doc["a"]), jobs)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            log.error("the schedule's saved state is unreadable (%.80r); starting afresh", raw)
            return cls(applied=offset or 0)


class Scheduler:
    """One member's part of the schedule: a thread with its own consumer; see the module doc.

    ``clock`` returns seconds since the epoch (``time.time``); tests pass a fake one.
    """

    def __init__(
        self,
        app_name: str,
        jobs: dict[str, JobSpec],
        broker: Broker,
        settings: Settings,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.time,
        consumer: Backend | None = None,
    ) -> None:
        self.jobs = jobs
        self.topic = schedule_topic(app_name)
        self.tp = TopicPartition(self.topic, 0)
        self._broker = broker
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._consumer = consumer
        self.member = f"{socket.gethostname()}-{os.getpid()}"
        self.state: ScheduleState | None = None  # while this member owns the schedule
        self._assigned = False
        self._reread = False
        self._stop = threading.Event()
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max(2, settings.threads), "streamq-job")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._procs: ProcessPoolExecutor | None = None
        self._loop_thread: threading.Thread | None = None
        self._running: dict[str, int] = dict.fromkeys(jobs, 0)
        self._queued: dict[str, deque[Tick]] = {n: deque() for n in jobs}
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._check_size()

    def _check_size(self) -> None:
        big = ScheduleState("x" * 64, 2**53, 2**53, {n: JobState(2**53, 2**53, True)
                                                     for n in self.jobs})  # fmt: skip
        if len(big.encode()) > MAX_STATE_BYTES:
            raise ConfigError(
                f"{len(self.jobs)} jobs are more than one schedule can keep with its "
                f"ownership ({MAX_STATE_BYTES} bytes); shorten the names or split the app"
            )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="streamq-schedule", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop firing and leave; running jobs get ``shutdown_timeout`` to end."""
        self._stop.set()

    def wait(self, timeout: float) -> bool:
        """After ``stop``: wait for the thread and the running jobs; False if some outlived it."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            futures = list(self._futures)
        for fut in futures:
            remaining = deadline - time.monotonic()
            with contextlib.suppress(Exception):  # a job's error was logged where it ran
                fut.result(max(0.0, remaining))
        self._pool.shutdown(wait=False)
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(max(0.0, deadline - time.monotonic()))
            if not self._loop_thread.is_alive():
                self._loop.close()
        if self._procs is not None:
            self._procs.shutdown(wait=False, cancel_futures=True)
        return not any(not f.done() for f in futures)

    @property
    def busy(self) -> bool:
        """Whether a run is in flight or queued (a run is counted before it is submitted)."""
        with self._lock:
            return any(self._running.values()) or any(self._queued.values())

    def _main(self) -> None:
        try:
            consumer = self._consumer or self.join()
            try:
                while not self._stop.is_set():
                    self.step(poll_until(consumer, 100, self._wait(), self._stop))
            finally:
                consumer.close()
                self.state = None
        except BaseException as exc:
            self.error = exc
            log.error("the schedule stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self.closed.set()

    def join(self) -> Backend:
        """Create the schedule's topic if needed and join its group (``start`` does this)."""
        ensure_topic(self._broker, self.topic, 1, compact=True)
        consumer = self._broker.consumer(self.topic, self._settings)
        consumer.subscribe([self.topic], self._on_assign, self._on_revoke, self._on_lost)
        self._consumer = consumer
        return consumer

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        if self.tp in tps:
            self._assigned = True  # the state is loaded on the loop, after the poll

    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        if self.tp in tps:
            self._give_up("revoked")

    def _on_lost(self, tps: list[TopicPartition]) -> None:
        if self.tp in tps:
            self._give_up("lost")

    def _give_up(self, how: str) -> None:
        if self.state is not None:
            log.info("schedule %s: ownership %s; this member stops firing", self.topic, how)
        self._assigned = False
        self.state = None

    def _wait(self) -> float:
        if self.state is None:
            return MAX_WAIT
        now = self._clock() * 1000
        soonest = min(
            (job.schedule.after(self.state.jobs[n].last) for n, job in self.jobs.items()
             if n in self.state.jobs),
            default=now + MAX_WAIT * 1000,
        )  # fmt: skip
        return max(0.001, min(MAX_WAIT, (soonest - now) / 1000))

    # -- one turn of the loop (tests call it with a fake clock) -------------------------------

    def step(self, records: list[Message]) -> None:
        self._start_queued()
        if self._assigned and self.state is None:
            self._take_over()
        if self.state is None:
            return
        triggers = self._apply(records)
        now = int(self._clock() * 1000)
        fire: list[tuple[JobSpec, int]] = []
        changed = bool(records) or bool(triggers)
        for name, job in self.jobs.items():
            js = self.state.jobs[name]
            due = job.due(js.last, now)
            if not due:
                continue
            changed = True
            js.last = due[-1]
            if js.paused:
                self._count(name, "paused", len(due))
                continue
            taken = due if job.missed is Missed.ALL else due[-1:]
            if len(due) > len(taken):
                self._count(name, "missed", len(due) - len(taken))
            js.fired_at = now
            fire.extend((job, t) for t in taken)
        if changed and not self._save():
            return
        for i, (job, t) in enumerate(fire):  # a catch-up's ticks run one after another
            catch_up = i > 0 and fire[i - 1][0] is job
            self._start(job, job.tick(t, now), queue=catch_up)
        for job in triggers:
            self._start(job, job.tick(now, now, triggered=True))

    def _take_over(self) -> None:
        assert self._consumer is not None
        offset, raw = self._consumer.load_state(self.tp)
        state = ScheduleState.decode(raw, offset)
        now = int(self._clock() * 1000)
        previous = state.owner
        state.owner, state.since = self.member, now
        for name, job in self.jobs.items():
            js = state.jobs.get(name)
            if js is None:  # a new job starts at its next tick; nothing before it is "missed"
                state.jobs[name] = JobState(job.schedule.latest(now) or 0)
                continue
            due = job.due(js.last, now)
            if due and job.missed is Missed.SKIP:
                self._count(name, "missed", len(due))
                log.info("job %s: %d tick(s) missed while no member owned the schedule; "
                         "skipped (missed='skip')", name, len(due))  # fmt: skip
                js.last = due[-1]
            elif due:
                log.info("job %s: %d tick(s) missed while no member owned the schedule; "
                         "firing %s (missed=%r)", name, len(due),
                         "the latest" if job.missed is Missed.ONCE else "them all",
                         job.missed.value)  # fmt: skip
        for gone in set(state.jobs) - set(self.jobs):
            del state.jobs[gone]  # a job removed from the app
        self.state = state
        if self._reread:  # a save failed while the partition stayed ours: commands read since
            self._reread = False  # then were not applied; read them again
            try:
                self._consumer.seek(self.tp, state.applied)
            except BrokerError as exc:
                log.warning("schedule %s: cannot re-read commands (%s)", self.topic, exc)
        if self._save():
            log.info("schedule %s: this member (%s) owns it now, after %s", self.topic,
                     self.member, previous or "no one")  # fmt: skip

    def _save(self) -> bool:
        """Store the state with the ownership; False (and stop firing) when refused."""
        assert self._consumer is not None and self.state is not None
        try:
            self._consumer.save_state(self.tp, self.state.applied, self.state.encode())
            return True
        except (CommitFailed, MemberFenced, BrokerError) as exc:
            log.warning("schedule %s: state not saved, so nothing fired (%s); this member "
                        "fires again once it holds the schedule", self.topic, exc)  # fmt: skip
            self.state = None  # reloaded from the broker if the partition is still ours
            self._reread = True
            return False

    # -- commands ------------------------------------------------------------------------------

    def _apply(self, records: list[Message]) -> list[JobSpec]:
        assert self.state is not None
        triggers = []
        for msg in records:
            if msg.offset < self.state.applied:
                continue  # applied before the last owner's end
            self.state.applied = msg.offset + 1
            try:
                doc = orjson.loads(msg.value or b"")
                cmd, name = doc["cmd"], doc["job"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("schedule %s: ignoring a record that is no command (offset %d)",
                            self.topic, msg.offset)  # fmt: skip
                continue
            job, js = self.jobs.get(name), self.state.jobs.get(name)
            if job is None or js is None:
                log.warning("schedule %s: %s of unknown job %r ignored", self.topic, cmd, name)
            elif cmd in ("pause", "resume"):
                js.paused = cmd == "pause"
                log.info("job %s: %sd", name, cmd)
            elif cmd == "trigger":
                triggers.append(job)
                log.info("job %s: triggered", name)
            else:
                log.warning("schedule %s: unknown command %r ignored", self.topic, cmd)
        return triggers

    # -- runs ------------------------------------------------------------------------------------

    def _start(self, job: JobSpec, tick: Tick, *, queue: bool = False) -> None:
        """Run ``tick`` now, queue it behind the job's run, or skip it (``overlap="skip"``).

        ``queue``: a tick of a catch-up, which waits for the one before it whatever the policy.
        """
        with self._lock:
            busy = bool(self._running[job.name] or self._queued[job.name])
            if busy and (queue or job.overlap is Overlap.QUEUE):
                self._queued[job.name].append(tick)
                return
        if busy:
            self._count(job.name, "overlapped")
            log.warning("job %s: tick %s skipped: its previous run is still running "
                        "(overlap='skip')", job.name, tick.at.isoformat())  # fmt: skip
            return
        self._launch(job, tick)

    def _launch(self, job: JobSpec, tick: Tick, *, counted: bool = False) -> None:
        if not counted:
            with self._lock:
                self._running[job.name] += 1
        if job.is_async:
            fut: Future[Any] = asyncio.run_coroutine_threadsafe(
                self._run_async(job, tick), self._event_loop()
            )
        else:
            fut = self._pool.submit(self._run_sync, job, tick)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(functools.partial(self._ended, job.name))

    def _ended(self, name: str, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)
            self._running[name] -= 1
        self._start_queued()  # the job's next queued tick starts as this run ends

    def _start_queued(self) -> None:
        """Start the next queued tick of each job with none running (from any thread)."""
        if self._stop.is_set():
            return  # stopping: queued ticks are dropped (they were claimed: at most once)
        with self._lock:
            ready = [(self.jobs[n], q.popleft()) for n, q in self._queued.items()
                     if q and not self._running[n]]  # fmt: skip
            for job, _ in ready:
                self._running[job.name] += 1  # taken here, so no other thread starts it too
        for job, tick in ready:
            self._launch(job, tick, counted=True)

    def _run_sync(self, job: JobSpec, tick: Tick) -> None:
        for attempt in range(1, job.retry.max_retries + 2):
            args = (tick._replace(attempt=attempt),) if job.takes_tick else ()
            try:
                if job.in_process:
                    self._processes().submit(job.fn, *args).result()
                else:
                    job.fn(*args)
            except Exception as exc:
                if not self._retry(job, tick, attempt, exc):
                    return
                self._stop.wait(job.retry.delay(attempt))
            else:
                self._count(job.name, "ok")
                return

    async def _run_async(self, job: JobSpec, tick: Tick) -> None:
        for attempt in range(1, job.retry.max_retries + 2):
            try:
                call = job.fn(tick._replace(attempt=attempt)) if job.takes_tick else job.fn()
                await asyncio.wait_for(call, job.timeout)
            except Exception as exc:
                if not self._retry(job, tick, attempt, exc):
                    return
                await asyncio.sleep(job.retry.delay(attempt))
            else:
                self._count(job.name, "ok")
                return

    def _retry(self, job: JobSpec, tick: Tick, attempt: int, exc: Exception) -> bool:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt > job.retry.max_retries or self._stop.is_set():
            self._count(job.name, "failed")
            log.error("job %s: tick %s failed after %d attempt(s): %s", job.name,
                      tick.at.isoformat(), attempt, what)  # fmt: skip
            return False
        log.warning("job %s: tick %s failed (%s); retrying", job.name, tick.at.isoformat(), what)
        return True

    def _processes(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._procs is None:
                self._procs = ProcessPoolExecutor(max(1, self._settings.processes or 1))
            return self._procs

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=loop.run_forever, name="streamq-jobs", daemon=True
            )
            self._loop_thread.start()
            self._loop = loop
        return self._loop

    def _count(self, name: str, outcome: str, n: int = 1) -> None:
        self._stats.jobs[(name, outcome)] += n
