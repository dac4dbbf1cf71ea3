"""The one way in: ``App.run``, ``App.serve``, ``streamq run`` and every spawned worker.

They used to be four copies of "load, configure, one worker or a supervisor" that drifted
apart (one stop deadline, one log format, one check of the arguments at a time). Here they
share the app loader, the argument check, the choice between one worker in this process and
N member processes under the supervisor, and the child's entry point, so a fix lands once.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import logs
from ..brokers import in_process
from ..errors import EXIT_CRITICAL, ConfigError, StreamqError, exit_code_for
from ..metrics import MetricsServer
from .supervisor import supervise
from .worker import STOP_DEADLINE_GRACE, Worker, critical_line, run_worker

if TYPE_CHECKING:
    from ..app import App

__all__ = ["check_run_args", "launch", "load_app", "locate", "run_app_child"]

log = logs.get_logger("streamq.worker")

# The supervisor stops waiting for a member this long past the member's own stop deadlines.
STOP_MARGIN = 10.0


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTR`` (the current directory first) and return the App there."""
    from ..app import App

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{spec!r} is not MODULE:APP (for example billing:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import module {module_name!r}: {exc}") from None
        raise ConfigError(f"importing {module_name!r} failed: {exc}") from None
    except StreamqError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc} "
            f"(run: python -c 'import {module_name}' for the traceback)"
        ) from None
    app = getattr(module, attr, None)
    if app is None:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise ConfigError(f"{spec} is a {type(app).__name__}, not a streamq.App")
    return app


def locate(app: App) -> str:
    """The ``MODULE:ATTR`` a spawned worker imports to find this app again."""
    name = app._module or ""
    module = sys.modules.get(name)
    for attr, value in vars(module).items() if module is not None else ():
        if value is app:
            return f"{name}:{attr}"
    raise ConfigError(
        "workers: worker processes import the app again, so it must be a module-level "
        f"name (found no module attribute holding App({app.name!r}))"
    )


def check_run_args(app: App, workers: int, until_idle: float | None) -> None:
    """Every problem with a run's arguments at once, before anything connects."""
    problems = []
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        problems.append(f"workers: must be an integer >= 1, got {workers!r}")
    elif workers > 1 and in_process(app.settings.broker):
        problems.append(
            "workers: memory:// lives inside one process, so extra worker processes would "
            "each see an empty log; use workers=1, or a Kafka or Redis broker"
        )
    if until_idle is not None and (not isinstance(until_idle, int | float) or until_idle < 0):
        problems.append(f"until_idle: must be seconds >= 0, got {until_idle!r}")
    if not app.handlers and not app.jobs:
        problems.append(f"app {app.name!r} has no handlers and no jobs: nothing to run")
    if problems:
        raise ConfigError(problems)


def launch(
    app: App,
    workers: int = 1,
    until_idle: float | None = None,
    *,
    spec: str | None = None,
    server: MetricsServer | None = None,
    on_critical: Callable[[str], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> int:
    """Consume with ``app``: one worker in this process, or ``workers`` member processes.

    One worker raises what ended it badly; a handler's process-critical error (SystemExit,
    MemoryError, ...) is raised as it is, unless ``on_critical`` takes its one line: then the
    result is ``EXIT_CRITICAL``. ``on_done`` runs after that worker, however it ended. With
    more, each member imports the app again by ``spec`` (found in its module when None),
    configured as this one is and logging as this process does; the result is the
    supervisor's exit code. ``server`` (``metrics.serving``) is opened by the caller, before
    the app's module is imported where it can be, and shared by every member.
    """
    check_run_args(app, workers, until_idle)
    metrics = server is not None
    if workers == 1:
        worker = Worker(app, until_idle, metrics=metrics)
        try:
            run_worker(app, until_idle, worker)
        except BaseException as exc:
            if on_critical is None or exc is not worker.critical:
                raise
            on_critical(critical_line(exc))
            return EXIT_CRITICAL
        finally:
            if on_done is not None:
                on_done()
        return 0
    root = logging.getLogger()
    level = logging.getLevelName(root.getEffectiveLevel())
    fmt = logs.format_of(root)
    args = (spec or locate(app), app._overrides, until_idle, level, fmt, metrics)
    on_exit = server.mark_dead if server is not None else None
    stop_timeout = app.settings.shutdown_timeout + STOP_DEADLINE_GRACE + STOP_MARGIN
    target = (__name__, run_app_child.__name__)
    return supervise(target, args, workers, on_exit=on_exit, stop_timeout=stop_timeout)


def run_app_child(
    slot: int,
    spec: str,
    overrides: dict[str, object],
    until_idle: float | None,
    log_level: str,
    log_format: str = "text",
    metrics: bool = False,
) -> int:
    """Entry point of one spawned worker: import the app afresh, run it, return the exit code."""
    logs.configure(log_level, log_format, worker=slot)
    app: App | None = None
    worker: Worker | None = None
    try:
        app = load_app(spec)
        if overrides:
            app.configure(**overrides)
        if app.settings.instance_id:  # static membership needs one id per member
            app.configure(instance_id=f"{app.settings.instance_id}-{slot}")
        worker = Worker(app, until_idle, metrics=metrics)
        run_worker(app, until_idle, worker)
        return 0
    except BaseException as exc:
        if worker is not None and exc is worker.critical:
            log.error("worker %d: %s", slot, critical_line(exc))
            return EXIT_CRITICAL
        if not isinstance(exc, StreamqError | SystemExit | KeyboardInterrupt):
            raise
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            log.error("worker %d: %s", slot, exc)
        return exit_code_for(exc)
    finally:
        if app is not None:
            print(f"streamq: worker {slot}: {app.stats.summary()}", file=sys.stderr, flush=True)
