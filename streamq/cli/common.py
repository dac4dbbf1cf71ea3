"""What every ``streamq`` command shares: errors as exit codes, the broker URL, previews.

Every failure a user can cause ends here as one line on stderr and a documented exit code
(see the package docstring), so the command modules raise streamq's errors and never print
tracebacks or call ``sys.exit`` for an error themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..brokers.view import LogView, open_view
from ..credentials import scrub
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, StreamqError, exit_code_for
from ..settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])


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
