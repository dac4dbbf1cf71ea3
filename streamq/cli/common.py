"""What every ``streamq`` command shares: errors as exit codes, options, the broker URL.

Every failure a user can cause ends here as one line on stderr and a documented exit code
(see the package docstring), so the command modules raise streamq's errors and never print
tracebacks or call ``sys.exit`` for an error themselves.

An option that several commands take is declared here once, so its name, type and help read
the same in every ``streamq <command> --help``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..brokers.view import LogView, open_view
from ..credentials import scrub
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, StreamqError, exit_code_for
from ..settings import load_settings

if TYPE_CHECKING:
    from ..app import App

F = TypeVar("F", bound=Callable[..., Any])

broker_option = click.option(
    "--broker",
    help="Broker URL; beats STREAMQ_BROKER and any broker the app sets.",
)
app_argument = click.argument("app_spec", metavar="MODULE:APP")
group_option = click.option("--group", required=True, help="The consumer group.")
partitions_option = click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition (repeat for several); default every partition.",
)
rate_option = click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="Records per second."
)


def offsets_option(name: str, what: str) -> Callable[[F], F]:
    """Positions typed the way the broker's view prints them (``LogView.offset_text``)."""
    return click.option(
        name,
        metavar="N|P:N,...",
        help=f"{what}: N for every partition or P:N[,P:N...]; N is a Kafka offset, or a Redis "
        "entry ID MS-SEQ as tail and lag print it (its integer form works too).",
    )


def time_option(name: str, what: str) -> Callable[[F], F]:
    return click.option(name, metavar="TIME", help=f"{what}: ISO-8601 (naive = local) or epoch ms.")


def say_error(message: str) -> None:
    click.echo(f"streamq: error: {scrub(message)}", err=True)


def fail(message: str, code: int) -> None:
    say_error(message)
    sys.exit(code)


def errors_as_exit_codes(fn: F) -> F:
    """Turn streamq's errors into one stderr line and the documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc).replace("\n", "\n  "), EXIT_USAGE)
        except StreamqError as exc:
            fail(str(exc), exit_code_for(exc))
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


def stages(app: App) -> dict[str, tuple[list[str], list[str]]]:
    """Topic -> (handlers that read it, handlers that write it), as ``group/handler``.

    Writers are known from the handlers' ``outputs=``; DLQ topics count as written by the
    handler they protect.
    """
    edges: dict[str, tuple[list[str], list[str]]] = {}
    for spec in app.handlers.values():
        name = f"{spec.group}/{spec.name}"
        edges.setdefault(spec.topic, ([], []))[0].append(name)
        written = sorted(spec.outputs or ())
        if spec.dlq_topic is not None:
            written.append(spec.dlq_topic)
        for topic in written:
            edges.setdefault(topic, ([], []))[1].append(name)
    return edges


def broker_url(broker: str | None) -> str:
    return broker if broker is not None else load_settings().broker


def view_of(broker: str | None) -> LogView:
    url = broker_url(broker)
    return open_view(url, load_settings(broker=url))


def preview(value: bytes | None, limit: int = 120) -> str:
    if value is None:
        return "None (tombstone)"
    text = repr(value[:limit])
    return text + ("..." if len(value) > limit else "")
