"""``call_each_until`` and ``Lease``: the handler loop that stops at a deadline, both cores."""

from __future__ import annotations

import math
import time

import pytest

from streamq import dispatch


def _impls() -> list:
    impls = [pytest.param((dispatch._LeasePy, dispatch._call_each_until_py), id="pure-python")]
    if not dispatch.NO_EXTENSIONS:
        from streamq import _dispatch

        impls.insert(
            0,
            pytest.param(
                (_dispatch.Lease, _dispatch.call_each_until), id="cython", marks=pytest.mark.cython
            ),
        )
    return impls


@pytest.fixture(params=_impls())
def impl(request: pytest.FixtureRequest) -> tuple:
    return request.param


def test_no_record_starts_past_the_deadline(impl) -> None:
    lease_type, call_each_until = impl
    lease = lease_type("token", math.inf)
    seen: list[int] = []

    def handle(x: int) -> None:
        seen.append(x)
        if x == 3:
            lease.deadline = time.monotonic() - 1  # another thread expired it

    failed: list[BaseException] = []
    assert call_each_until(handle, list(range(10)), 0, 10, failed, lease) == 4
    assert seen == [0, 1, 2, 3] and failed == []
    lease.deadline = time.monotonic() + 60  # renewed: the lane goes on where it stopped
    assert call_each_until(handle, list(range(10)), 4, 10, failed, lease) == 10
    assert seen == list(range(10))
    assert lease.token == "token"


def test_an_exception_stops_at_the_record_that_raised(impl) -> None:
    lease_type, call_each_until = impl
    lease = lease_type(None, time.monotonic() + 60)

    def handle(x: int) -> None:
        if x == 2:
            raise ValueError(x)

    failed: list[BaseException] = []
    assert call_each_until(handle, [0, 1, 2, 3], 0, 4, failed, lease) == 2
    assert isinstance(failed[0], ValueError)


def test_the_deadline_uses_the_clock_of_time_monotonic(impl) -> None:
    lease_type, call_each_until = impl
    past = lease_type(None, time.monotonic() - 0.001)
    assert call_each_until(print, [1], 0, 1, [], past) == 0
    future = lease_type(None, time.monotonic() + 5)
    assert call_each_until(lambda _: None, [1, 2], 0, 2, [], future) == 2
