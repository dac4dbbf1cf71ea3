"""The poll runs with the cyclic collector off, and a batch it frees leaves no collection due."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streamq.runtime.collector import poll_uncollected


@pytest.fixture
def collections() -> Iterator[list[int]]:
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)
        gc.enable()


def _client_batch(n: int, timeout: float) -> list[object]:
    """What a client does per poll: one tracked object per record, freed after conversion."""
    assert not gc.isenabled()
    raw = [[i] for i in range(n)]  # lists are tracked, as confluent-kafka's Message is
    return [len(r) for r in raw]  # untracked results; ``raw`` dies on return


def test_a_batch_of_tracked_objects_triggers_no_collection(collections: list[int]) -> None:
    for _ in range(3):  # without the wrapper: about 10 collections per batch of 7,000
        assert len(poll_uncollected(_client_batch, 7_000, 0.1)) == 7_000
    assert gc.isenabled()
    assert collections == []
    for _ in range(3):  # the fixture's counter does see them when the collector is on
        [[i] for i in range(7_000)]
    assert collections, "the collector ran no collection at all: this test proves nothing"


def test_a_collector_the_application_turned_off_stays_off(collections: list[int]) -> None:
    gc.disable()
    poll_uncollected(_client_batch, 10, 0.1)
    assert not gc.isenabled()


def test_the_collector_is_back_on_when_the_poll_raises(collections: list[int]) -> None:
    def broken(n: int, timeout: float) -> list[object]:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        poll_uncollected(broken, 10, 0.1)
    assert gc.isenabled()
