"""The fault tests' checkers catch what they exist to catch (a checker that cannot fail proves
nothing): commits ahead of handling, order broken inside an epoch, two owners at once."""

from __future__ import annotations

import pytest

from tests.fault.invariants import check_epochs, check_exclusive, check_leases, check_run
from tests.fault.observer import Sample, check_commits
from tests.integration.helpers import Entry


def e(pid: int, partition: int, offset: int, t: int, ident: int | None = None) -> Entry:
    return Entry(pid, partition, offset, f"k{offset % 3}", offset if ident is None else ident, t)


RUN = [e(1, 0, 0, 10), e(1, 0, 1, 20), e(1, 0, 2, 30), e(2, 0, 1, 40), e(2, 0, 2, 50)]


def test_commits_behind_handling_pass_and_one_ahead_is_caught() -> None:
    assert check_commits([Sample(25, 0, 2), Sample(60, 0, 3)], RUN) > 0
    with pytest.raises(AssertionError, match="committed up to 3 while offset 2"):
        check_commits([Sample(25, 0, 3)], RUN)  # offset 2 was handled at 30


def test_redis_acks_count_pending_entries_as_not_done() -> None:
    assert check_commits([Sample(25, 0, 3, frozenset({2}))], RUN) > 0
    with pytest.raises(AssertionError, match=r"acknowledged.*offset 2"):
        check_commits([Sample(25, 0, 3, frozenset())], RUN)


def test_no_sample_is_a_failure_not_a_pass() -> None:
    with pytest.raises(AssertionError, match="took no sample"):
        check_commits([], RUN)


def test_an_epoch_may_rewind_only_at_its_start() -> None:
    assert check_epochs(RUN) == 2  # pid 2 took over from offset 1: a new epoch
    rewound = [e(1, 0, 0, 10), e(1, 0, 1, 20), e(1, 0, 0, 30)]
    with pytest.raises(AssertionError, match="I3 nonmonotonic-poll"):
        check_epochs(rewound)
    assert check_epochs(rewound, rewinds_within_a_member=True) == 2


def test_stepping_over_a_record_handled_only_later_is_caught() -> None:
    skipped = [e(1, 0, 0, 10), e(1, 0, 2, 20), e(2, 0, 1, 30)]
    with pytest.raises(AssertionError, match=r"I3 int-poll-skip.*stepping over 1"):
        check_epochs(skipped)
    deduped = [e(2, 0, 1, 5), e(1, 0, 0, 10), e(1, 0, 2, 20)]  # 1 was handled before
    assert check_epochs(deduped) == 2


def test_two_processes_handling_one_partition_at_once_are_caught() -> None:
    starts = [e(1, 0, 0, 10), e(2, 0, 5, 15)]
    ends = [e(1, 0, 0, 20), e(2, 0, 5, 25)]
    with pytest.raises(AssertionError, match="I6 two owners: pids 1 and 2"):
        check_exclusive(starts, ends, set())
    assert check_exclusive(starts, ends, {1}) == 2  # an injected zombie window
    apart = [e(1, 0, 0, 10), e(2, 0, 5, 21)]
    assert check_exclusive(apart, ends, set()) == 2


def test_a_member_handling_while_another_holds_the_lease_is_caught() -> None:
    starts, ends = [e(1, 0, 0, 10), e(2, 0, 1, 40)], [e(1, 0, 0, 30), e(2, 0, 1, 50)]
    fine = [(12, 14, 0, 1), (32, 34, 0, 2), (42, 44, 0, 2), (20, 22, 0, None)]
    assert check_leases(fine, starts, ends) == 3
    with pytest.raises(AssertionError, match="pid 1 handled partition 0 while pid 2 held"):
        check_leases([(20, 22, 0, 2)], starts, ends)
    assert check_leases([(28, 32, 0, 2)], starts, ends) == 1  # read as pid 1 finished


def test_check_run_reports_loss_first() -> None:
    with pytest.raises(AssertionError, match="I1 lost-write"):
        check_run(RUN, produced={0, 1, 2, 3})
