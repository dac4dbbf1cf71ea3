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

import importlib

import click

from .. import __version__, logs
from ..dispatch import IMPLEMENTATION

__all__ = ["main"]

# Each command's module, imported when the command runs (or ``--help`` lists it): a worker
# process (``streamq run``) then skips what only the operator commands need (rich's tables
# and progress bars, the bench harness): 0.1 s of its 0.8 s start here.
COMMANDS = {
    "run": "run:run",
    "topics": "topics:topics",
    "produce": "topics:produce",
    "tail": "topics:tail",
    "dlq": "dlq:dlq",
    "replay": "replay:replay",
    "offsets": "replay:offsets",
    "lag": "inspect:lag",
    "status": "inspect:status",
    "schedules": "schedules:schedules",
    "bench": "bench:bench",
}


class _Commands(click.Group):
    """A group whose subcommands are imported by name, on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where.split(":")
        command: click.Command = getattr(importlib.import_module(f".{module}", __name__), attribute)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="streamq")
