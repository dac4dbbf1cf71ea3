"""Periodic jobs (``@app.every``): the tick grid, cron across DST, validation, the Scheduler.

Time is a fake clock everywhere: the pure parts take milliseconds, and each ``Scheduler`` is
driven by calling ``step()`` with the records of one poll, so a test moves time by setting
the clock, never by sleeping. Jobs run in the scheduler's threads; a test waits for their
effect with a bounded loop, and proves that nothing ran by first waiting until no run is in
flight. Each scheduler test has its own ``memory://`` log (``memory_url``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import streamq
from streamq import Producer, RetryPolicy, Tick, TopicPartition
from streamq.brokers.base import Backend
from streamq.brokers.memory import MemoryBroker, get_log, parse_url
from streamq.errors import BrokerUnavailable, ConfigError
from streamq.runtime.scheduler import Scheduler, ScheduleState, schedule_topic
from streamq.schedules import MAX_CATCH_UP, Cron, Every, JobSpec, build_job

MINUTE = 60_000  # ms
T = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms: a multiple of every interval used here
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def utc(ms_: int) -> datetime:
    return datetime.fromtimestamp(ms_ / 1000, UTC)


def job(fn: Callable[..., object] = lambda: None, **options: object) -> JobSpec:
    """``build_job`` with ``@app.every``'s defaults, for the pure tests."""
    defaults: dict[str, object] = {
        "seconds": None,
        "cron": None,
        "tz": None,
        "name": "j",
        "missed": "once",
        "overlap": "skip",
        "retry": RetryPolicy(),
        "timeout": None,
    }
    return build_job(fn, **{**defaults, **options})  # type: ignore[arg-type]


def grid(spec: JobSpec, start: datetime, end: datetime) -> list[int]:
    """Every tick in ``(start, end]``, as ``missed="all"`` would fire them."""
    return spec.due(ms(start), ms(end))


# -- the interval grid -------------------------------------------------------------------------


def test_every_minute_ticks_on_the_minute_since_the_epoch() -> None:
    every = job(seconds=60).schedule
    assert every == Every(MINUTE)
    assert every.after(T) == T + MINUTE  # strictly after a tick
    assert every.after(T + 1) == T + MINUTE
    assert every.after(T + MINUTE - 1) == T + MINUTE
    assert every.latest(T) == T  # at or before
    assert every.latest(T + MINUTE - 1) == T
    assert utc(every.after(T + 25_000)) == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_due_lists_the_ticks_after_the_last_up_to_now_oldest_first() -> None:
    spec = job(seconds=60)
    assert spec.due(T, T + MINUTE - 1) == []
    assert spec.due(T, T + MINUTE) == [T + MINUTE]  # now is inclusive
    assert spec.due(T + 5, T + 3 * MINUTE + 5) == [T + MINUTE, T + 2 * MINUTE, T + 3 * MINUTE]
    assert spec.due(T + MINUTE, T + MINUTE) == []  # the last tick is never due again


def test_due_keeps_the_latest_max_catch_up_ticks_of_a_long_outage() -> None:
    spec = job(seconds=60)
    now = T + (MAX_CATCH_UP + 500) * MINUTE
    due = spec.due(T, now)
    assert len(due) == MAX_CATCH_UP
    assert due[-1] == now and due[0] == now - (MAX_CATCH_UP - 1) * MINUTE
    assert due == sorted(due)


def test_a_cron_catch_up_keeps_the_latest_max_catch_up_ticks() -> None:
    spec = job(cron="* * * * *")
    now = T + (MAX_CATCH_UP + 500) * MINUTE
    due = spec.due(T, now)
    assert due == [now - i * MINUTE for i in reversed(range(MAX_CATCH_UP))]


def test_a_timedelta_is_an_interval() -> None:
    assert job(seconds=timedelta(minutes=5)).schedule == Every(5 * MINUTE)
    assert job(seconds=timedelta(milliseconds=250)).schedule == Every(250)
    assert job(seconds=timedelta(minutes=5)).schedule.describe() == "every 300s"


def test_an_interval_tick_is_given_in_utc() -> None:
    tick = job(seconds=60).tick(T + MINUTE, T + MINUTE + 7)
    assert tick == Tick("j", utc(T + MINUTE), utc(T + MINUTE + 7))
    assert tick.at.tzinfo is UTC and tick.at_ms == T + MINUTE
    assert not tick.triggered and tick.attempt == 1


# -- cron across daylight saving time ----------------------------------------------------------


def test_a_cron_time_skipped_by_spring_forward_fires_once_after_the_gap() -> None:
    """Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST, so 02:30 never happens."""
    spec = job(cron="30 2 * * *", tz="Europe/Berlin")
    day = grid(
        spec, datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN), datetime(2026, 3, 30, 0, 0, tzinfo=BERLIN)
    )
    assert [utc(t) for t in day] == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]
    at = spec.tick(day[0], day[0]).at
    assert (at.hour, at.minute, at.utcoffset()) == (3, 0, timedelta(hours=2))
    assert at.tzinfo == BERLIN
    # the days around it keep 02:30 local, in CET before and CEST after
    around = grid(
        spec, datetime(2026, 3, 28, 0, 0, tzinfo=BERLIN), datetime(2026, 3, 31, 0, 0, tzinfo=BERLIN)
    )
    assert [utc(t) for t in around] == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_a_cron_time_repeated_by_fall_back_fires_once() -> None:
    """Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice."""
    spec = job(cron="30 2 * * *", tz="Europe/Berlin")
    day = grid(
        spec,
        datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN),
        datetime(2026, 10, 26, 0, 0, tzinfo=BERLIN),
    )
    assert [utc(t) for t in day] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]  # the first
    at = spec.tick(day[0], day[0]).at
    assert (at.hour, at.minute, at.utcoffset()) == (2, 30, timedelta(hours=2))


def test_a_half_hourly_cron_fires_at_each_real_half_hour_of_the_repeated_hour() -> None:
    spec = job(cron="*/30 * * * *", tz="Europe/Berlin")
    night = grid(
        spec,
        datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN),
        datetime(2026, 10, 25, 3, 0, tzinfo=BERLIN),
    )
    assert [utc(t) for t in night] == [
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC),  # 02:00 CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # 02:00 CET
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 10, 25, 2, 0, tzinfo=UTC),  # 03:00 CET
    ]
    local = [spec.tick(t, t).at for t in night]
    assert [(a.hour, a.minute) for a in local] == [(2, 0), (2, 30), (2, 0), (2, 30), (3, 0)]
    assert [a.utcoffset() for a in local] == [timedelta(hours=h) for h in (2, 2, 1, 1, 1)]


def test_the_latest_tick_during_the_repeated_hour_is_that_nights() -> None:
    """The second 02:00-02:30 of 25 October (01:00-01:30 UTC) comes after 02:30 CEST fired.

    ``latest`` must say so: ``due`` trusts it, so an owner taking over then (``missed``) and a
    job added then (it starts after its latest tick) depend on it.
    """
    spec = job(cron="30 2 * * *", tz="Europe/Berlin")
    fired = ms(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST
    yesterday = fired - 24 * 60 * MINUTE
    taking_over = ms(datetime(2026, 10, 25, 1, 10, tzinfo=UTC))  # 02:10 CET
    assert spec.due(yesterday, taking_over) == [fired]  # missed="once": fire it at takeover
    for minute in range(0, 90, 5):  # 00:30 to 01:55 UTC
        now = fired + minute * MINUTE
        assert spec.schedule.latest(now) == fired, utc(now)


def test_new_york_springs_forward_on_its_own_date() -> None:
    """New York, 8 March 2026: 02:00 EST becomes 03:00 EDT (Berlin is still on CET)."""
    spec = job(cron="30 2 * * *", tz="America/New_York")
    days = grid(
        spec,
        datetime(2026, 3, 7, 12, 0, tzinfo=NEW_YORK),
        datetime(2026, 3, 9, 12, 0, tzinfo=NEW_YORK),
    )
    assert [utc(t) for t in days] == [
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 03:00 EDT: the first minute after the gap
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),  # 02:30 EDT
    ]
    at = spec.tick(days[0], days[0]).at
    assert (at.hour, at.minute, at.utcoffset()) == (3, 0, timedelta(hours=-4))


def test_cron_defaults_to_utc() -> None:
    spec = job(cron="0 9 * * *")
    assert spec.schedule == Cron("0 9 * * *", ZoneInfo("UTC"))
    assert utc(spec.schedule.after(T)) == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "give an interval (seconds or a timedelta) or cron=, exactly one"),
        ({"seconds": 5, "cron": "* * * * *"}, "exactly one"),
        ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not a cron expression"),
        ({"cron": "every day"}, "is not a cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        ({"seconds": 5, "tz": "Europe/Berlin"}, "tz: only for cron= jobs"),
        ({"seconds": 0.05}, "the interval must be at least 0.1 seconds"),
        ({"seconds": timedelta(0)}, "the interval must be at least 0.1 seconds"),
        ({"seconds": True}, "the interval must be at least 0.1 seconds"),
        ({"seconds": 5, "missed": "sometimes"}, "missed: 'sometimes' is not one of 'once'"),
        ({"seconds": 5, "overlap": "parallel"}, "overlap: 'parallel' is not one of 'skip'"),
        ({"seconds": 5, "executor": "fibers"}, "executor: 'fibers' is not one of"),
        ({"seconds": 5, "executor": "asyncio"}, "executor: 'asyncio' runs async def jobs"),
        ({"seconds": 5, "timeout": 3}, "timeout: only async jobs can be cancelled"),
        ({"seconds": 5, "timeout": 0}, "timeout: must be a number of seconds > 0"),
    ],
)
def test_a_bad_option_is_one_config_error_naming_the_job(
    options: dict[str, object], problem: str
) -> None:
    app = streamq.App("svc", broker="memory://unused")
    with pytest.raises(ConfigError) as err:
        app.every(**options)(lambda: None)  # type: ignore[arg-type]
    (only,) = err.value.problems
    assert only.startswith("job '<lambda>': ") and problem in only
    assert app.jobs == {}


def test_every_problem_of_a_job_is_listed_in_one_error() -> None:
    app = streamq.App("svc", broker="memory://unused")

    def two_args(a, b) -> None:
        pass

    with pytest.raises(ConfigError) as err:
        app.every(
            5,
            cron="* * * * *",
            missed="sometimes",  # type: ignore[arg-type]
            overlap="parallel",  # type: ignore[arg-type]
            executor="fibers",  # type: ignore[arg-type]
            timeout=-1,
        )(two_args)
    problems = err.value.problems
    assert len(problems) == 6, problems
    for part in ("exactly one", "missed:", "overlap:", "takes no arguments, or one", "executor:"):
        assert sum(part in p for p in problems) == 1, part
    assert sum(p.startswith("job 'two_args': timeout:") for p in problems) == 1


def test_a_job_takes_nothing_or_one_tick() -> None:
    def keyword_only(*, tick) -> None:
        pass

    for fn in (lambda a, b: None, keyword_only):
        with pytest.raises(ConfigError, match="a job takes no arguments, or one"):
            job(fn, seconds=5)
    assert not job(lambda: None, seconds=5).takes_tick
    assert not job(lambda x=1: None, seconds=5).takes_tick
    assert job(lambda tick: None, seconds=5).takes_tick  # one required parameter: the tick

    def optional(tick: Tick = None) -> None:  # type: ignore[assignment]
        pass

    assert job(optional, seconds=5).takes_tick  # optional, but annotated: it gets the tick


def test_async_jobs_and_their_executors() -> None:
    async def tick_async() -> None:
        pass

    def tick_sync() -> None:
        pass

    assert job(tick_async, seconds=5, timeout=2.5).is_async
    with pytest.raises(ConfigError, match="'threads' runs sync jobs; this one is async def"):
        job(tick_async, seconds=5, executor="threads")
    with pytest.raises(ConfigError, match="'processes' needs a module-level function"):
        job(tick_sync, seconds=5, executor="processes")


def test_a_job_name_is_taken_once_per_app() -> None:
    app = streamq.App("svc", broker="memory://unused")
    app.every(60)(lambda: None)
    app.every(60, name="other")(lambda: None)
    with pytest.raises(ConfigError, match="job '<lambda>': the app has a job of that name already"):
        app.every(30)(lambda: None)
    assert sorted(app.jobs) == ["<lambda>", "other"]


def test_retry_is_a_policy_or_the_flat_names_not_both() -> None:
    app = streamq.App("svc", broker="memory://unused")
    with pytest.raises(ConfigError, match="retry: give retry=RetryPolicy"):
        app.every(60, retry=RetryPolicy(max_retries=1), max_retries=5)(lambda: None)
    app.every(60, name="policy", retry=RetryPolicy(max_retries=1, backoff=0))(lambda: None)
    app.every(60, name="flat", max_retries=7, retry_backoff=0.5)(lambda: None)
    assert app.jobs["policy"].retry.max_retries == 1
    assert app.jobs["flat"].retry == RetryPolicy(7, 0.5)


def test_app_every_registers_the_function_unchanged() -> None:
    app = streamq.App("svc", broker="memory://unused")

    def report(tick: Tick) -> None:
        pass

    assert app.every(cron="0 6 * * 1-5", tz="Europe/Berlin", missed="all")(report) is report
    spec = app.jobs["report"]
    assert spec.schedule == Cron("0 6 * * 1-5", BERLIN)
    assert (spec.missed.value, spec.overlap.value, spec.takes_tick) == ("all", "skip", True)


# -- the Scheduler on memory:// -----------------------------------------------------------------


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000


def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """A bound for a thread's effect: fails after ``timeout`` rather than hang (never waits
    once ``condition`` holds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


class Member:
    """One worker's part of the schedule: its Scheduler, and the consumer it joined with."""

    def __init__(self, app: streamq.App, clock: Clock) -> None:
        self.app = app
        self.sched = Scheduler(
            app.name, app.jobs, MemoryBroker(app.settings.broker), app.settings, app.stats,
            clock=clock,
        )  # fmt: skip
        # join() subscribes with the scheduler's own rebalance callbacks, as start() does
        self.consumer: Backend = self.sched.join()
        self.closed = False

    def turn(self) -> None:
        """One turn of the loop: poll (which follows the group), then step."""
        self.sched.step(self.consumer.poll_batch(100, 0))

    def idle(self) -> None:
        """Wait until no run it started is in flight; then a job that never ran never will."""
        until(lambda: not self.sched.busy, "the runs in flight to end")

    @property
    def owns(self) -> bool:
        return self.sched.state is not None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sched.stop()
            self.consumer.close()
            self.sched.wait(5)


@pytest.fixture
def clock() -> Clock:
    return Clock(T + 20_000)  # 20 s after a minute


@pytest.fixture
def members(clock: Clock) -> Iterator[Callable[[streamq.App], Member]]:
    started: list[Member] = []

    def join(app: streamq.App) -> Member:
        started.append(Member(app, clock))
        return started[-1]

    yield join
    for m in started:
        m.close()
        loop = m.sched._loop  # a test must not leak the async jobs' loop into the next ones
        if loop is not None:
            until(lambda loop=loop: not loop.is_running(), "the jobs' event loop to stop")
            if not loop.is_closed():
                loop.close()


def make_app(url: str) -> streamq.App:
    return streamq.App("svc", broker=url)


def saved(url: str) -> ScheduleState:
    """The state the owner saved with its ownership, as any member would load it."""
    consumer = MemoryBroker(url).consumer(schedule_topic("svc"), None)
    offset, raw = consumer.load_state(TopicPartition(schedule_topic("svc"), 0))
    return ScheduleState.decode(raw, offset)


def command(url: str, cmd: str, name: str) -> None:
    with Producer(url) as p:
        p.send(schedule_topic("svc"), {"cmd": cmd, "job": name})


def evict(url: str) -> None:
    """What the group does to a member that stopped polling for a session: it is out, and the
    partition is nobody's until the next member syncs."""
    log = get_log(parse_url(url)[0])
    with log.cond:
        g = log.group(schedule_topic("svc"))
        member = g.owner.pop(TopicPartition(schedule_topic("svc"), 0))
        del g.members[member], g.last_seen[member]
        g.generation += 1


def recording(
    app: streamq.App, ran: list[Tick], hold: threading.Event | None = None, **options: object
) -> None:
    """Register ``tick``, every minute, recording its ticks; ``hold`` keeps each run running
    until it is set."""

    @app.every(60, name="tick", **options)  # type: ignore[arg-type]
    def record(tick: Tick) -> None:
        ran.append(tick)
        if hold is not None:
            hold.wait(5)


def test_the_owner_fires_each_due_tick_after_saving_it(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    ran: list[Tick] = []
    recording(app, ran)
    owner = members(app)
    owner.turn()
    assert owner.owns
    assert saved(memory_url).jobs["tick"].last == T  # a new job starts after its latest tick
    owner.idle()
    assert ran == []

    clock.now_ms = T + MINUTE + 5
    owner.turn()
    until(lambda: len(ran) == 1, "the first tick")
    assert ran[0].at == utc(T + MINUTE) and ran[0].fired_at == utc(T + MINUTE + 5)
    assert (ran[0].job, ran[0].triggered, ran[0].attempt) == ("tick", False, 1)
    state = saved(memory_url)
    assert (state.jobs["tick"].last, state.jobs["tick"].fired_at) == (T + MINUTE, T + MINUTE + 5)

    owner.turn()  # same time: nothing new is due
    clock.now_ms = T + 2 * MINUTE
    owner.turn()
    until(lambda: len(ran) == 2, "the second tick")
    owner.idle()
    assert [t.at_ms for t in ran] == [T + MINUTE, T + 2 * MINUTE]
    assert app.stats.jobs[("tick", "ok")] == 2


def test_a_second_member_never_fires_while_the_first_owns_the_schedule(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    first_ran: list[Tick] = []
    second_ran: list[Tick] = []
    first_app, second_app = make_app(memory_url), make_app(memory_url)
    recording(first_app, first_ran)
    recording(second_app, second_ran)
    first, second = members(first_app), members(second_app)
    first.turn()
    second.turn()
    for minute in range(1, 4):
        clock.now_ms = T + minute * MINUTE
        second.turn()
        first.turn()
        second.turn()
        until(lambda minute=minute: len(first_ran) == minute, f"tick {minute} on the owner")
        first.idle()
    second.idle()
    assert first.owns and not second.owns
    assert second_ran == []
    assert second_app.stats.jobs == {}


def test_the_heir_does_not_fire_what_its_predecessor_fired(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    first_ran: list[Tick] = []
    heir_ran: list[Tick] = []
    first_app, heir_app = make_app(memory_url), make_app(memory_url)
    recording(first_app, first_ran)
    recording(heir_app, heir_ran)
    first, heir = members(first_app), members(heir_app)
    first.turn()
    heir.turn()
    clock.now_ms = T + MINUTE
    first.turn()
    until(lambda: len(first_ran) == 1, "the owner's tick")
    first.close()

    heir.turn()  # same minute: the partition moves, the state says T+1min was fired
    assert heir.owns
    heir.idle()
    assert heir_ran == []
    clock.now_ms = T + 2 * MINUTE
    heir.turn()
    until(lambda: len(heir_ran) == 1, "the heir's first tick")
    assert heir_ran[0].at_ms == T + 2 * MINUTE
    assert [t.at_ms for t in first_ran] == [T + MINUTE]


def take_over_after_downtime(
    url: str,
    clock: Clock,
    members: Callable[[streamq.App], Member],
    hold: threading.Event | None = None,
    **options: object,
) -> tuple[list[Tick], streamq.App, Member]:
    """The first owner fires T+1min and stops; the heir takes over at T+6min+10s, so the
    ticks T+2min .. T+6min (five) fell due while no member owned the schedule. ``hold``
    holds the heir's runs."""
    first_app, heir_app = make_app(url), make_app(url)
    first_ran: list[Tick] = []
    heir_ran: list[Tick] = []
    recording(first_app, first_ran, **options)
    recording(heir_app, heir_ran, hold, **options)
    first = members(first_app)
    first.turn()
    clock.now_ms = T + MINUTE
    first.turn()
    until(lambda: len(first_ran) == 1, "the first owner's tick")
    first.close()
    clock.now_ms = T + 6 * MINUTE + 10_000
    heir = members(heir_app)
    heir.turn()
    assert heir.owns
    return heir_ran, heir_app, heir


def test_missed_once_fires_only_the_latest_missed_tick(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    ran, app, heir = take_over_after_downtime(memory_url, clock, members, missed="once")
    until(lambda: len(ran) == 1, "the catch-up tick")
    heir.idle()
    assert [t.at for t in ran] == [utc(T + 6 * MINUTE)]  # the period it serves
    assert ran[0].fired_at == utc(T + 6 * MINUTE + 10_000)
    assert app.stats.jobs[("tick", "missed")] == 4
    assert saved(memory_url).jobs["tick"].last == T + 6 * MINUTE


def test_missed_skip_fires_none_of_the_missed_ticks(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    ran, app, heir = take_over_after_downtime(memory_url, clock, members, missed="skip")
    heir.idle()
    assert ran == []
    assert app.stats.jobs[("tick", "missed")] == 5
    assert saved(memory_url).jobs["tick"].last == T + 6 * MINUTE
    clock.now_ms = T + 7 * MINUTE
    heir.turn()
    until(lambda: len(ran) == 1, "the next tick")
    assert ran[0].at_ms == T + 7 * MINUTE


def test_missed_all_fires_each_missed_tick_oldest_first(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    hold = threading.Event()  # the oldest runs while the others are queued behind it
    ran, app, heir = take_over_after_downtime(
        memory_url, clock, members, hold, missed="all", overlap="queue"
    )
    until(lambda: len(ran) == 1, "the oldest catch-up tick")
    hold.set()  # a queued tick starts as the run before it ends, with no turn in between
    until(lambda: len(ran) == 5, "the catch-up ticks")
    heir.idle()
    assert [t.at_ms for t in ran] == [T + m * MINUTE for m in range(2, 7)]
    assert {t.fired_at for t in ran} == {utc(T + 6 * MINUTE + 10_000)}
    assert app.stats.jobs == {("tick", "ok"): 5}  # none missed, none overlapped


def test_missed_all_fires_each_missed_tick_with_the_default_overlap(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    """``missed="all"`` promises each missed tick, but the catch-up ticks start in one turn:
    while the oldest runs, the others must not count as overlapping it and be dropped."""
    hold = threading.Event()
    ran, app, heir = take_over_after_downtime(memory_url, clock, members, hold, missed="all")
    until(lambda: len(ran) == 1, "the oldest catch-up tick")
    hold.set()
    for _ in range(5):
        heir.idle()
        heir.turn()
    heir.idle()
    assert app.stats.jobs[("tick", "overlapped")] == 0
    assert [t.at_ms for t in ran] == [T + m * MINUTE for m in range(2, 7)]


def test_queued_ticks_keep_their_order_when_a_run_ends_during_a_turn(
    memory_url: str,
    clock: Clock,
    members: Callable[[streamq.App], Member],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With overlap="queue", a tick that falls due after others were queued runs after them,
    even when the run they waited for ends between two starts of one turn."""
    hold = threading.Event()
    ran, _, heir = take_over_after_downtime(
        memory_url, clock, members, hold, missed="all", overlap="queue"
    )
    # the turn above started T+2min (held) and queued T+3min..T+6min; next, T+7min falls due
    # and the held run ends just before the turn starts it
    start = heir.sched._start
    ended_before: list[int] = []

    def run_ends_first(job: JobSpec, tick: Tick, **how: bool) -> None:
        hold.set()
        heir.idle()
        ended_before.append(tick.at_ms)
        start(job, tick, **how)

    until(lambda: len(ran) == 1, "the oldest catch-up tick")
    monkeypatch.setattr(heir.sched, "_start", run_ends_first)
    clock.now_ms = T + 7 * MINUTE
    heir.turn()
    monkeypatch.undo()
    assert ended_before == [T + 7 * MINUTE]  # the fault happened: no run when it started
    for _ in range(6):
        heir.idle()
        heir.turn()
    heir.idle()
    assert [t.at_ms for t in ran] == [T + m * MINUTE for m in range(2, 8)]


def test_overlap_skip_drops_a_tick_due_while_the_previous_run_runs(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    gate = threading.Event()
    started: list[Tick] = []

    @app.every(60, name="slow", overlap="skip")
    def slow(tick: Tick) -> None:
        started.append(tick)
        gate.wait(5)

    owner = members(app)
    owner.turn()
    clock.now_ms = T + MINUTE
    owner.turn()
    until(lambda: len(started) == 1, "the first run to start")
    clock.now_ms = T + 2 * MINUTE
    owner.turn()  # due while the first run holds
    assert app.stats.jobs[("slow", "overlapped")] == 1
    gate.set()
    owner.idle()
    owner.turn()  # the skipped tick is not run later
    clock.now_ms = T + 3 * MINUTE
    owner.turn()
    until(lambda: len(started) == 2, "the next tick's run")
    owner.idle()
    assert [t.at_ms for t in started] == [T + MINUTE, T + 3 * MINUTE]
    assert app.stats.jobs[("slow", "ok")] == 2


def test_overlap_queue_runs_a_tick_due_during_the_previous_run_after_it(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    gate = threading.Event()
    started: list[Tick] = []

    @app.every(60, name="slow", overlap="queue")
    def slow(tick: Tick) -> None:
        started.append(tick)
        gate.wait(5)

    owner = members(app)
    owner.turn()
    clock.now_ms = T + MINUTE
    owner.turn()
    until(lambda: len(started) == 1, "the first run to start")
    clock.now_ms = T + 2 * MINUTE + 30_000
    owner.turn()
    owner.turn()  # still running: the queued tick waits
    assert len(started) == 1
    gate.set()
    owner.idle()
    owner.turn()
    until(lambda: len(started) == 2, "the queued run")
    owner.idle()
    assert [t.at_ms for t in started] == [T + MINUTE, T + 2 * MINUTE]
    assert started[1].fired_at == utc(T + 2 * MINUTE + 30_000)  # fired when it fell due
    assert app.stats.jobs[("slow", "overlapped")] == 0
    assert app.stats.jobs[("slow", "ok")] == 2


def test_pause_skips_ticks_for_good_and_resume_fires_the_next(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    ran: list[Tick] = []
    recording(app, ran)
    owner = members(app)
    owner.turn()
    command(memory_url, "pause", "tick")
    owner.turn()
    assert saved(memory_url).jobs["tick"].paused
    for minute in (1, 2, 3):
        clock.now_ms = T + minute * MINUTE
        owner.turn()
    assert app.stats.jobs[("tick", "paused")] == 3
    command(memory_url, "resume", "tick")
    owner.turn()
    assert not saved(memory_url).jobs["tick"].paused
    owner.idle()
    assert ran == []  # the paused ticks are not fired late
    clock.now_ms = T + 4 * MINUTE
    owner.turn()
    until(lambda: len(ran) == 1, "the tick after resume")
    assert ran[0].at_ms == T + 4 * MINUTE


def test_trigger_fires_once_outside_the_grid(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    ran: list[Tick] = []
    recording(app, ran)
    owner = members(app)
    owner.turn()
    clock.now_ms = T + 33_000
    command(memory_url, "trigger", "tick")
    command(memory_url, "trigger", "no-such-job")  # logged and ignored
    owner.turn()
    until(lambda: len(ran) == 1, "the triggered run")
    owner.turn()
    owner.idle()
    assert len(ran) == 1
    assert ran[0].triggered and ran[0].at == ran[0].fired_at == utc(T + 33_000)
    assert saved(memory_url).applied == 2
    assert saved(memory_url).jobs["tick"].last == T  # the grid is untouched


def test_a_command_is_applied_once_even_when_the_heir_reads_it_again(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    first_app, heir_app = make_app(memory_url), make_app(memory_url)
    first_ran: list[Tick] = []
    heir_ran: list[Tick] = []
    recording(first_app, first_ran)
    recording(heir_app, heir_ran)
    first = members(first_app)
    first.turn()
    command(memory_url, "trigger", "tick")
    command(memory_url, "pause", "tick")
    first.turn()
    until(lambda: len(first_ran) == 1, "the triggered run")
    assert saved(memory_url).applied == 2
    first.close()

    heir = members(heir_app)
    heir.turn()
    assert heir.owns
    heir.consumer.seek(TopicPartition(schedule_topic("svc"), 0), 0)  # read both again
    again = heir.consumer.poll_batch(100, 0)
    assert [m.offset for m in again] == [0, 1]
    heir.sched.step(again)
    heir.idle()
    assert heir_ran == []
    assert heir.sched.state is not None and heir.sched.state.jobs["tick"].paused  # kept
    clock.now_ms = T + MINUTE
    heir.turn()
    heir.idle()
    assert heir_ran == [] and heir_app.stats.jobs[("tick", "paused")] == 1


def test_a_member_whose_save_is_refused_fires_nothing(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    """A frozen owner was evicted; it wakes up and steps without polling first."""
    frozen_app, heir_app = make_app(memory_url), make_app(memory_url)
    frozen_ran: list[Tick] = []
    heir_ran: list[Tick] = []
    recording(frozen_app, frozen_ran)
    recording(heir_app, heir_ran)
    frozen = members(frozen_app)
    frozen.turn()
    assert frozen.owns
    evict(memory_url)
    heir = members(heir_app)
    heir.turn()
    assert heir.owns  # the fault happened: the partition moved on

    clock.now_ms = T + MINUTE
    frozen.sched.step([])  # its save is refused
    assert not frozen.owns
    frozen.idle()
    assert frozen_ran == []
    heir.turn()
    until(lambda: len(heir_ran) == 1, "the heir's tick")
    assert heir_ran[0].at_ms == T + MINUTE
    assert frozen_app.stats.jobs == {}


def test_a_command_survives_a_save_that_failed_while_the_member_kept_the_schedule(
    memory_url: str,
    clock: Clock,
    members: Callable[[streamq.App], Member],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A save can fail for a moment (the coordinator moved, a timeout) without the member
    losing the partition; the command it was saving with must still be applied."""
    app = make_app(memory_url)
    ran: list[Tick] = []
    recording(app, ran)
    owner = members(app)
    owner.turn()
    save = owner.consumer.save_state
    failures: list[int] = []

    def fails_once(tp: TopicPartition, offset: int, state: str) -> None:
        if not failures:
            failures.append(offset)
            raise BrokerUnavailable("coordinator not available")
        save(tp, offset, state)

    monkeypatch.setattr(owner.consumer, "save_state", fails_once)
    command(memory_url, "trigger", "tick")
    owner.turn()
    assert failures == [1]  # the fault happened, on the save that applied the trigger
    for _ in range(3):
        owner.turn()
    owner.idle()
    assert owner.owns
    assert len(ran) == 1 and ran[0].triggered


def test_a_failing_job_is_retried_in_place(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    attempts: list[int] = []

    @app.every(60, name="flaky", retry=RetryPolicy(max_retries=3, backoff=0))
    def flaky(tick: Tick) -> None:
        attempts.append(tick.attempt)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    @app.every(60, name="broken", retry=RetryPolicy(max_retries=1, backoff=0))
    def broken() -> None:
        raise RuntimeError("never")

    owner = members(app)
    owner.turn()
    clock.now_ms = T + MINUTE
    owner.turn()
    until(lambda: len(attempts) == 3, "three attempts")
    owner.idle()
    assert attempts == [1, 2, 3]
    assert app.stats.jobs == {("flaky", "ok"): 1, ("broken", "failed"): 1}


def test_an_async_job_gets_its_tick(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    app = make_app(memory_url)
    ran: list[Tick] = []

    @app.every(60, name="async", timeout=5)
    async def record(tick: Tick) -> None:
        ran.append(tick)

    owner = members(app)
    owner.turn()
    clock.now_ms = T + MINUTE
    owner.turn()
    until(lambda: len(ran) == 1, "the async run")
    owner.idle()
    assert ran[0].at_ms == T + MINUTE
    assert app.stats.jobs[("async", "ok")] == 1


def test_waiting_for_the_scheduler_closes_its_event_loop(
    memory_url: str, clock: Clock, members: Callable[[streamq.App], Member]
) -> None:
    """An app that stops its schedule (tests, ``run(until_idle=...)``) must not leak the async
    jobs' loop and its self-pipe: under ``filterwarnings = error`` that is a ResourceWarning."""
    app = make_app(memory_url)
    ran: list[Tick] = []

    @app.every(60, name="async")
    async def record(tick: Tick) -> None:
        ran.append(tick)

    owner = members(app)
    owner.turn()
    clock.now_ms = T + MINUTE
    owner.turn()
    until(lambda: len(ran) == 1, "the async run")
    owner.close()
    loop = owner.sched._loop
    assert loop is not None
    until(lambda: not loop.is_running(), "the jobs' event loop to stop")
    assert loop.is_closed()  # after wait(), nothing of the scheduler is left open
