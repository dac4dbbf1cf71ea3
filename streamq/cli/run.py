"""``streamq run``: consume with an app's handlers, in this process or under a supervisor.

The command loads ``MODULE:APP``, applies ``--broker``, and either runs one worker here or
starts N member processes through the supervisor, with the metrics server shared by all.
"""

from __future__ import annotations

import logging
import sys

import click

from ..errors import EXIT_CRITICAL
from ..metrics import serving
from ..runtime.supervisor import supervise
from ..runtime.worker import STOP_DEADLINE_GRACE, Worker, critical_line, run_worker
from .common import errors_as_exit_codes, fail, load_app


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--broker", help="Broker URL; overrides the app and STREAMQ_BROKER.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop once caught up and idle for this many seconds.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus /metrics, /healthz and /readyz on this port (all workers in one "
    "view; 0 picks a free port).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port binds to (0.0.0.0 to expose it).",
)
@errors_as_exit_codes
def run(
    app_spec: str,
    broker: str | None,
    workers: int,
    until_idle: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Consume with the handlers of MODULE:APP until SIGINT/SIGTERM (or idle)."""
    with serving(metrics_host, metrics_port) as server:
        app = load_app(app_spec)
        overrides = {"broker": broker} if broker is not None else {}
        if overrides:
            app.configure(**overrides)
        if workers > 1:
            app._check_run_args(workers, until_idle)
            module, attr = app_spec.split(":", 1)
            root = logging.getLogger()
            level = logging.getLevelName(root.getEffectiveLevel())
            log_format = click.get_current_context().find_root().params.get("log_format", "text")
            target = ("streamq.runtime.worker", "run_app_child")
            args = (module, attr, overrides, until_idle, level, log_format, server is not None)
            on_exit = server.mark_dead if server is not None else None
            # past the worker's own deadlines (STOP_DEADLINE_GRACE) by a margin
            stop_timeout = app.settings.shutdown_timeout + STOP_DEADLINE_GRACE + 10
            code = supervise(target, args, workers, on_exit=on_exit, stop_timeout=stop_timeout)
            sys.exit(code)
        app._check_run_args(1, until_idle)
        worker = Worker(app, until_idle, metrics=server is not None)
        critical: BaseException | None = None
        try:
            run_worker(app, until_idle, worker)
        except BaseException as exc:
            if exc is not worker.critical:
                raise
            critical = exc  # a handler's SystemExit or MemoryError is not the CLI's own
        finally:
            click.echo(f"streamq: {app.stats.summary()}", err=True)
        if critical is not None:
            fail(critical_line(critical), EXIT_CRITICAL)
