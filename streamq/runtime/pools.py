"""Where sync handlers run when not inline: a thread pool, or a pool of processes.

Lanes keep the order: a lane hands the pool one chunk of its unit at a time and waits for it,
so records of one partition (or key lane) never overlap, while different lanes' chunks run in
the pool at once. Workers in the process pool receive chunks of records, not single records,
so the cost of pickling and a round trip is paid per chunk.

Handlers for ``executor="processes"`` travel by reference (module and name), so they must be
module-level functions; each pool process builds the handler's invoker once (the payload
decoder included) and keeps it.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ..dispatch import Lease, call_each, call_each_until
from ..handlers import Executor as HandlerExecutor
from ..handlers import HandlerSpec
from ..message import Message

if TYPE_CHECKING:
    from ..pipeline import Output

__all__ = [
    "BrokenProcessPool",
    "PoolProcessDied",
    "Pools",
    "call_each_leased",
    "deadline_marker",
    "process_chunk",
    "read_deadline_marker",
]


class PoolProcessDied(RuntimeError):
    """A process of the handler pool died (a crash, an OOM kill) while this chunk ran.

    Every chunk in flight on that pool fails with it, most of them innocent, so it is retried
    like any failure (in a fresh pool); a record that kills the process every time ends in
    the DLQ once its retries are spent.
    """


class Pools:
    """The worker's executors, created on first use and shut down with the worker."""

    def __init__(self, threads: int, processes: int | None) -> None:
        self._threads_n = threads
        self._processes_n = processes or os.cpu_count() or 1
        self._threads: ThreadPoolExecutor | None = None
        self._processes: ProcessPoolExecutor | None = None

    @classmethod
    def for_specs(cls, threads: int, processes: int | None, specs: Iterable[HandlerSpec]) -> Pools:
        """Pools with threads enough for every ``ordering="none"`` handler's concurrency.

        A smaller pool would cap it silently.
        """
        wanted = [s.concurrency for s in specs if s.executor is HandlerExecutor.THREADS]
        return cls(max([threads, *wanted]), processes)

    def threads(self) -> Executor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._threads_n, thread_name_prefix="streamq-h")
        return self._threads

    def processes(self) -> Executor:
        if self._processes is None:
            # spawned, never forked: a fork would copy librdkafka's and redis-py's threads' locks
            self._processes = ProcessPoolExecutor(
                self._processes_n, mp_context=multiprocessing.get_context("spawn")
            )
        return self._processes

    def replace_broken_processes(self, broken: Executor) -> None:
        """A pool process died (its handler crashed it): later chunks get a fresh pool."""
        if self._processes is broken:
            self._processes = None
            broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)


def call_each_leased(
    invoke: Callable[[Any], Any],
    unit: list[Message],
    i: int,
    end: int,
    failed: list[BaseException],
    lease: Lease | None,
) -> int:
    """``call_each`` in a pool thread; with a lease, no handler starts past its deadline."""
    if lease is None:
        return int(call_each(invoke, unit, i, end, failed))
    return int(call_each_until(invoke, unit, i, end, failed, lease))


# -- in the pool processes --------------------------------------------------------------------

_invokers: dict[Any, Callable[[Any], Any]] = {}


def process_chunk(
    fn: Callable[..., Any],
    batch: bool,
    records: Any,
    timeout: float | None = None,
    marker: str | None = None,
    produces: bool = False,
    allowed: frozenset[str] | None = None,
) -> tuple[int, BaseException | None, list[list[Output]] | None]:
    """Run ``fn`` over a chunk: how many finished, what stopped it, and what each produced.

    With ``produces``, the encoded outputs of each finished call (``streamq.pipeline``).

    ``batch`` handlers get the whole list in one call (0 or all finished). With a
    ``timeout``, a timer that needs no GIL (``faulthandler``, as in ``streamq.deadline``)
    ends this process once the chunk has run that long, having written its stacks to
    ``marker``: a handler stuck in C code cannot hold it up, and the clock starts here, not
    while the chunk waited for a free process. The parent reads ``marker`` to tell a
    timeout from a crash.
    """
    invoke = _invokers.get((fn, batch))
    if invoke is None:
        from ..handlers import build_invoker

        invoke, _ = build_invoker(fn, batch=batch)
        _invokers[(fn, batch)] = invoke
    outputs: list[list[Output]] | None = None
    if produces:
        outputs = []
        invoke = _collecting(invoke, batch, outputs, allowed)
    if timeout is None or marker is None:
        return (*_run_chunk(invoke, batch, records), outputs)
    with open(marker, "w") as out:  # faulthandler writes to a file descriptor
        faulthandler.dump_traceback_later(timeout, exit=True, file=out)
        try:
            return (*_run_chunk(invoke, batch, records), outputs)
        finally:
            faulthandler.cancel_dump_traceback_later()


def _collecting(
    invoke: Callable[[Any], Any],
    batch: bool,
    outputs: list[list[Output]],
    allowed: frozenset[str] | None,
) -> Callable[[Any], None]:
    """Encode each call's result here, so the parent gets bytes, not the user's objects."""
    from ..pipeline import outputs_of

    def collect(arg: Any) -> None:
        outputs.append(outputs_of(invoke(arg), None if batch else arg.key, allowed))

    return collect


def _run_chunk(
    invoke: Callable[[Any], Any], batch: bool, records: Any
) -> tuple[int, BaseException | None]:
    if batch:
        try:
            invoke(records)
        except BaseException as exc:
            return 0, _portable(exc)
        return len(records), None
    failed: list[BaseException] = []
    done = int(call_each(invoke, records, 0, len(records), failed))
    return done, (_portable(failed[0]) if failed else None)


def deadline_marker() -> str:
    """A fresh empty file for a timed chunk's process to write its stacks to if it times out."""
    fd, path = tempfile.mkstemp(prefix="streamq-timeout-")
    os.close(fd)
    return path


def read_deadline_marker(marker: str | None, *, remove: bool = False) -> str:
    """What a timed-out pool process wrote to ``marker`` (empty: it did not time out)."""
    if marker is None:
        return ""
    try:
        with open(marker, errors="replace") as f:
            text = f.read().strip()
        if remove:
            os.unlink(marker)
    except OSError:
        return ""
    return text


def _portable(exc: BaseException) -> BaseException:
    """The exception as the parent can receive it: itself if it pickles, else a summary."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return exc
