"""Periodic jobs: ``@app.every(...)`` specs, their tick grids, and the ``Tick`` a job receives.

A job's ticks are a grid every member computes alike: an interval's ticks are multiples of
the interval since the epoch (so ``every(60)`` fires on the minute, whoever owns the
schedule), a cron job's are its expression's times in its time zone (``cronsim``, the parser
Healthchecks runs, which treats DST like Debian's cron: a time skipped by the spring change
fires at the first minute after the gap, one repeated by the autumn change fires once).
Which member fires a tick, and how the last fired tick survives a crash, is
``streamq.runtime.scheduler``'s part; everything here is pure, so a fake clock tests it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import ConfigError
from .handlers import enum_choice
from .retry import RetryPolicy

__all__ = ["Cron", "Every", "JobSpec", "Missed", "Overlap", "Tick", "build_job"]

# A catch-up with missed="all" fires at most this many ticks; older ones are skipped (said).
MAX_CATCH_UP = 1000


class Tick(NamedTuple):
    """The tick a job runs for: pass a parameter annotated ``streamq.Tick`` to receive it.

    ``at`` is the scheduled time (aware; the job's time zone for cron jobs, else UTC), so a
    job that was late or caught up after downtime still knows which period it serves.
    """

    job: str
    at: datetime
    fired_at: datetime
    triggered: bool = False  # by ``streamq schedules trigger``, outside the grid
    attempt: int = 1

    @property
    def at_ms(self) -> int:
        return round(self.at.timestamp() * 1000)


class Missed(StrEnum):
    """What happens to ticks that fell due while no member owned the schedule."""

    ONCE = "once"
    """Fire the latest of them once, skip the rest: a job that catches up, not a storm."""

    SKIP = "skip"
    """Fire none of them: the job waits for its next tick."""

    ALL = "all"
    """Fire each, oldest first (at most ``MAX_CATCH_UP``)."""


class Overlap(StrEnum):
    """What happens to a tick that falls due while the job's previous run is still running."""

    SKIP = "skip"
    """Skip the tick (counted and logged): one run of a job at a time."""

    QUEUE = "queue"
    """Run it as soon as the previous run ended, one after the other."""


class Schedule(Protocol):
    def after(self, t_ms: int) -> int:
        """The first tick strictly after ``t_ms``."""

    def latest(self, t_ms: int) -> int | None:
        """The last tick at or before ``t_ms`` (None: there is none)."""

    def zone(self) -> ZoneInfo | None:
        """The time zone ticks are given in (None: UTC)."""

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Every:
    """Ticks at every multiple of ``interval_ms`` since the epoch."""

    interval_ms: int

    def after(self, t_ms: int) -> int:
        return (t_ms // self.interval_ms + 1) * self.interval_ms

    def latest(self, t_ms: int) -> int | None:
        return (t_ms // self.interval_ms) * self.interval_ms

    def zone(self) -> ZoneInfo | None:
        return None

    def describe(self) -> str:
        seconds = self.interval_ms / 1000
        return f"every {seconds:g}s"


@dataclass(frozen=True)
class Cron:
    """Ticks at a cron expression's times in ``tz``."""

    expr: str
    tz: ZoneInfo

    def after(self, t_ms: int) -> int:
        start = datetime.fromtimestamp(t_ms / 1000, self.tz)
        return _ms(next(CronSim(self.expr, start)))

    def latest(self, t_ms: int) -> int | None:
        # cronsim's reverse walk starts strictly before its start (so start a second later),
        # and follows the wall clock: in an autumn's repeated hour it skips the tick of the
        # first pass. The forward walk is exact, so step forward from where it landed.
        start = datetime.fromtimestamp(t_ms / 1000 + 1, self.tz)
        found = _ms(next(CronSim(self.expr, start, reverse=True)))
        if found > t_ms:
            return self.latest(found - 1)
        while (later := self.after(found)) <= t_ms:
            found = later
        return found

    def zone(self) -> ZoneInfo | None:
        return self.tz

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.tz.key})"


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True)
class JobSpec:
    """One periodic job, validated at registration."""

    name: str
    fn: Callable[..., Any]
    schedule: Schedule
    missed: Missed
    overlap: Overlap
    retry: RetryPolicy
    timeout: float | None
    is_async: bool
    takes_tick: bool
    in_process: bool = False  # executor="processes": runs in a pool process

    def due(self, last_ms: int, now_ms: int) -> list[int]:
        """Ticks in ``(last_ms, now_ms]``, oldest first; at most ``MAX_CATCH_UP`` of the latest."""
        latest = self.schedule.latest(now_ms)
        if latest is None or latest <= last_ms:
            return []
        if isinstance(self.schedule, Every):
            step = self.schedule.interval_ms
            first = max(self.schedule.after(last_ms), latest - (MAX_CATCH_UP - 1) * step)
            return list(range(first, latest + 1, step))
        ticks: list[int] = []
        t = last_ms
        while len(ticks) < MAX_CATCH_UP * 2:  # a cron grid: walk it, then keep the tail
            t = self.schedule.after(t)
            if t > now_ms:
                break
            ticks.append(t)
        if ticks and ticks[-1] != latest:  # walked past the cap: jump to the end
            ticks = [latest]
        return ticks[-MAX_CATCH_UP:]

    def tick(self, at_ms: int, fired_ms: int, *, triggered: bool = False) -> Tick:
        tz = self.schedule.zone() or UTC
        return Tick(
            self.name,
            datetime.fromtimestamp(at_ms / 1000, tz),
            datetime.fromtimestamp(fired_ms / 1000, tz),
            triggered,
        )


def build_job(
    fn: Callable[..., Any],
    *,
    seconds: float | timedelta | None,
    cron: str | None,
    tz: str | None,
    name: str | None,
    missed: str,
    overlap: str,
    retry: RetryPolicy,
    timeout: float | None,
    executor: str | None = None,
) -> JobSpec:
    """Validate ``@app.every`` and inspect the function once; every problem in one error."""
    problems: list[str] = []
    label = name or getattr(fn, "__name__", None) or repr(fn)
    schedule: Schedule | None = None
    if (seconds is None) == (cron is None):
        problems.append("give an interval (seconds or a timedelta) or cron=, exactly one")
    elif cron is not None:
        schedule = _cron(cron, tz, problems)
    else:
        if tz is not None:
            problems.append("tz: only for cron= jobs (an interval is the same in every zone)")
        schedule = _every(seconds, problems)
    missed_ = enum_choice(Missed, missed, "missed", problems)
    overlap_ = enum_choice(Overlap, overlap, "overlap", problems)
    if not callable(fn):
        problems.append(f"{fn!r} is not callable")
    is_async = inspect.iscoroutinefunction(fn)
    takes_tick = False
    if callable(fn):
        try:
            params = list(inspect.signature(fn, eval_str=True).parameters.values())
        except Exception:  # an annotation that does not evaluate: judge by the names alone
            try:
                params = list(inspect.signature(fn).parameters.values())
            except (TypeError, ValueError):
                params = []
        required = [p for p in params if p.default is p.empty and p.kind in _POSITIONAL]
        if len(required) > 1 or any(p.kind is p.KEYWORD_ONLY and p.default is p.empty
                                    for p in params):  # fmt: skip
            problems.append("a job takes no arguments, or one: the streamq.Tick it runs for")
        takes_tick = bool(required) or any(_is_tick(p.annotation) for p in params)
    if executor not in (None, "threads", "asyncio", "processes"):
        problems.append(f"executor: {executor!r} is not one of 'threads', 'asyncio', 'processes'")
    elif executor == "asyncio" and not is_async:
        problems.append("executor: 'asyncio' runs async def jobs; this one is sync")
    elif executor in ("threads", "processes") and is_async:
        problems.append(f"executor: {executor!r} runs sync jobs; this one is async def")
    elif executor == "processes" and "<locals>" in getattr(fn, "__qualname__", "<locals>"):
        problems.append("executor: 'processes' needs a module-level function (it is pickled)")
    if timeout is not None:
        if not isinstance(timeout, int | float) or timeout <= 0:
            problems.append("timeout: must be a number of seconds > 0")
        elif not is_async:
            problems.append(
                "timeout: only async jobs can be cancelled; a sync job in a thread cannot be "
                "stopped from outside (make it async def, or time it out inside)"
            )
    if problems:
        raise ConfigError([f"job {label!r}: {p}" for p in problems])
    assert schedule is not None and missed_ is not None and overlap_ is not None
    return JobSpec(
        label,
        fn,
        schedule,
        missed_,
        overlap_,
        retry,
        timeout,
        is_async,
        takes_tick,
        executor == "processes",
    )


def _is_tick(annotation: Any) -> bool:
    if annotation in (Tick, "Tick", "streamq.Tick"):
        return True
    return Tick in getattr(annotation, "__args__", ())  # Tick | None, Optional[Tick]


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _every(seconds: float | timedelta | None, problems: list[str]) -> Every | None:
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0.1:
        problems.append("the interval must be at least 0.1 seconds")
        return None
    return Every(round(seconds * 1000))


def _cron(expr: str, tz: str | None, problems: list[str]) -> Cron | None:
    try:
        zone = ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"tz: unknown time zone {tz!r} (an IANA name, like Europe/Berlin)")
        return None
    try:
        CronSim(expr, datetime.now(zone))
    except (CronSimError, TypeError, AttributeError) as exc:
        problems.append(f"cron: {expr!r} is not a cron expression ({exc})")
        return None
    return Cron(expr, zone)
