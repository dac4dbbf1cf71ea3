"""``call_each_until`` and ``Lease``: the handler loop that stops at a deadline, both cores."""

from __future__ import annotations

import math
import time

from tests.core import Core


def test_no_record_starts_past_the_deadline(core: Core) -> None:
    lease = core.Lease("token", math.inf)
    seen: list[int] = []

    def handle(x: int) -> None:
        seen.append(x)
        if x == 3:
            lease.deadline = time.monotonic() - 1  # another thread expired it

    failed: list[BaseException] = []
    assert core.call_each_until(handle, list(range(10)), 0, 10, failed, lease) == 4
    assert seen == [0, 1, 2, 3] and failed == []
    lease.deadline = time.monotonic() + 60  # renewed: the lane goes on where it stopped
    assert core.call_each_until(handle, list(range(10)), 4, 10, failed, lease) == 10
    assert seen == list(range(10))
    assert lease.token == "token"


def test_an_exception_stops_at_the_record_that_raised(core: Core) -> None:
    lease = core.Lease(None, time.monotonic() + 60)

    def handle(x: int) -> None:
        if x == 2:
            raise ValueError(x)

    failed: list[BaseException] = []
    assert core.call_each_until(handle, [0, 1, 2, 3], 0, 4, failed, lease) == 2
    assert isinstance(failed[0], ValueError)


def test_the_deadline_uses_the_clock_of_time_monotonic(core: Core) -> None:
    past = core.Lease(None, time.monotonic() - 0.001)
    assert core.call_each_until(print, [1], 0, 1, [], past) == 0
    future = core.Lease(None, time.monotonic() + 5)
    assert core.call_each_until(lambda _: None, [1, 2], 0, 2, [], future) == 2
