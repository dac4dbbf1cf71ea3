"""What every ``streamq`` command shares: errors as exit codes, the app loader, the broker URL.

Every failure a user can cause ends here as one line on stderr and a documented exit code
(see the package docstring), so the command modules raise streamq's errors and never print
tracebacks or call ``sys.exit`` for an error themselves.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..app import App
from ..brokers.view import LogView, open_view
from ..credentials import scrub
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, StreamqError, exit_code_for
from ..settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"streamq: error: {scrub(message)}", err=True)
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


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTR`` from the current directory and return the App there."""
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
