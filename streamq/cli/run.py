"""``streamq run``: consume with an app's handlers, in this process or under a supervisor.

The command loads ``MODULE:APP``, applies ``--broker``, and either runs one worker here or
starts N member processes through the supervisor, with the metrics server shared by all.
"""

from __future__ import annotations

import sys

import click

from ..metrics import serving
from ..runtime.launch import launch, load_app
from .common import app_argument, broker_option, errors_as_exit_codes, say_error


@click.command()
@app_argument
@broker_option
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
    with serving(metrics_host, metrics_port) as server:  # before the app's metrics exist
        app = load_app(app_spec)
        if broker is not None:
            app.configure(broker=broker)

        def summary() -> None:
            click.echo(f"streamq: {app.stats.summary()}", err=True)

        code = launch(
            app,
            workers,
            until_idle,
            spec=app_spec,
            server=server,
            on_critical=say_error,  # a handler's SystemExit is not the CLI's own
            on_done=summary,
        )
    sys.exit(code)
