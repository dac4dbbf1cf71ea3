"""The ``streamq`` command line.

Every failure a user can cause (a bad ``MODULE:APP``, an unknown URL scheme, an unreachable
broker, a malformed input line) is one line on stderr and a non-zero exit, never a
traceback. Exit codes (``streamq.errors``, one map for the CLI, workers and the supervisor):
1 broker or runtime error, 2 bad usage or configuration or an unknown topic, 3 shutdown timed
out with handlers still running, 4 the run ended with halted partitions, 5 fenced by a
newer member with the same instance id, 7 a handler raised a process-critical error, 130
interrupted.

This module assembles the command tree; each command family lives in its own module:
``run`` (consume), ``topics`` (create, list, produce, tail), ``dlq`` (list, show, redrive),
``replay`` (replay, offsets reset), ``inspect`` (lag, status), ``schedules`` (list, pause,
resume, trigger) and ``bench``. What they share
(errors as exit codes, the options several commands take, the broker URL) is ``common``.
"""

from __future__ import annotations

import click

from .. import __version__, logs
from ..dispatch import IMPLEMENTATION
from . import bench, dlq, inspect, replay, run, schedules, topics

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message=f"streamq %(version)s (dispatch core: {IMPLEMENTATION})")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line, with topic, partition, offset, handler and attempt on "
    "lines about a record.",
)
def cli(log_level: str, log_format: str) -> None:
    """Run and operate streamq consumer groups."""
    logs.configure(log_level.upper(), log_format)


cli.add_command(run.run)
cli.add_command(topics.topics)
cli.add_command(topics.produce)
cli.add_command(topics.tail)
cli.add_command(dlq.dlq)
cli.add_command(replay.replay)
cli.add_command(replay.offsets)
cli.add_command(inspect.lag)
cli.add_command(inspect.status)
cli.add_command(schedules.schedules)
cli.add_command(bench.bench)


def main() -> None:
    cli(prog_name="streamq")
