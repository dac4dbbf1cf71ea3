"""The ``streamq`` command line.

Every failure a user can cause (a bad ``MODULE:APP``, an unknown URL scheme, an unreachable
broker, a malformed input line) is one line on stderr and a non-zero exit, never a
traceback. Exit codes: 1 broker or runtime error, 2 bad usage or configuration, 3 shutdown
timed out with handlers still running, 4 the run ended with halted partitions.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import track
from rich.table import Table

from . import __version__
from .app import App
from .brokers import connect
from .dispatch import IMPLEMENTATION
from .errors import ConfigError, PartitionHalted, ShutdownTimeout, StreamqError
from .message import Message
from .producer import Producer
from .reader import read_topic
from .runtime.supervisor import supervise
from .runtime.worker import EXIT_HALTED, EXIT_RUNTIME, EXIT_SHUTDOWN_TIMEOUT, EXIT_USAGE
from .settings import load_settings

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"streamq: error: {message}", err=True)
    sys.exit(code)


def _errors_as_exit_codes(fn: F) -> F:
    """Turn streamq's errors into one stderr line and the documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc).replace("\n", "\n  "), EXIT_USAGE)
        except ShutdownTimeout as exc:
            _fail(str(exc), EXIT_SHUTDOWN_TIMEOUT)
        except PartitionHalted as exc:
            _fail(str(exc), EXIT_HALTED)
        except StreamqError as exc:
            _fail(str(exc), EXIT_RUNTIME)
        except KeyboardInterrupt:
            sys.exit(130)

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


def _broker_url(broker: str | None) -> str:
    return broker if broker is not None else load_settings().broker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message=f"streamq %(version)s (dispatch core: {IMPLEMENTATION})")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def cli(log_level: str) -> None:
    """Run and operate streamq consumer groups."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--broker", help="Broker URL; overrides the app and STREAMQ_BROKER.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop once caught up and idle for this many seconds.",
)
@_errors_as_exit_codes
def run(app_spec: str, broker: str | None, workers: int, until_idle: float | None) -> None:
    """Consume with the handlers of MODULE:APP until SIGINT/SIGTERM (or idle)."""
    app = load_app(app_spec)
    overrides = {"broker": broker} if broker is not None else {}
    if overrides:
        app.configure(**overrides)
    if workers > 1:
        app._check_run_args(workers, until_idle)
        module, attr = app_spec.split(":", 1)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        target = ("streamq.runtime.worker", "run_app_child")
        code = supervise(target, (module, attr, overrides, until_idle, level), workers)
        sys.exit(code)
    try:
        app.run(until_idle=until_idle)
    finally:
        click.echo(f"streamq: {app.stats.summary()}", err=True)


@cli.group()
def topics() -> None:
    """Create and list topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), required=True)
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def topics_create(name: str, partitions: int, broker: str | None) -> None:
    """Create topic NAME with P partitions."""
    url = _broker_url(broker)
    _warn_memory(url)
    admin = connect(url).admin()
    try:
        admin.create_topic(name, partitions)
    finally:
        admin.close()
    click.echo(f"created {name} with {partitions} partitions")


@topics.command("list")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def topics_list(broker: str | None) -> None:
    """List topics and their partition counts."""
    admin = connect(_broker_url(broker)).admin()
    try:
        for name, count in sorted(admin.list_topics().items()):
            click.echo(f"{name}\t{count}")
    finally:
        admin.close()


@cli.command()
@click.argument("topic")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@click.option("--key-field", help="Use this field of each JSON object as the record key.")
@click.option(
    "--file", "source", type=click.File("rb"), default="-", help="JSONL input; default stdin."
)
@_errors_as_exit_codes
def produce(topic: str, broker: str | None, key_field: str | None, source: IO[bytes]) -> None:
    """Send one record per JSON line of the input to TOPIC."""
    url = _broker_url(broker)
    _warn_memory(url)
    name = getattr(source, "name", "stdin")
    sent = 0
    with Producer(url) as producer:
        try:
            for lineno, line, obj in _json_lines(source, name):
                key = _key_of(obj, key_field, f"{name}:{lineno}") if key_field else None
                producer.send(topic, line, key=key)
                sent += 1
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {sent} records were sent before it") from None
        unacked = producer.flush(30.0)
    if unacked:
        _fail(f"{unacked} of {sent} records were not acknowledged by the broker", EXIT_RUNTIME)
    click.echo(f"sent {sent} records to {topic}", err=True)


def _json_lines(source: IO[bytes], name: str) -> Iterator[tuple[int, bytes, Any]]:
    for lineno, raw in enumerate(source, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            yield lineno, line, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{name}:{lineno}: not valid JSON ({exc})") from None


def _key_of(obj: Any, field: str, where: str) -> str:
    if not isinstance(obj, dict) or field not in obj:
        raise ConfigError(f"{where}: no field {field!r} for the key")
    value = obj[field]
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _warn_memory(url: str) -> None:
    if url.startswith("memory:"):
        click.echo(
            "streamq: warning: memory:// lives only inside this process; "
            "what this command writes is gone when it exits",
            err=True,
        )


def main() -> None:
    cli(prog_name="streamq")


if __name__ == "__main__":
    main()


@cli.group()
def dlq() -> None:
    """Inspect and redrive dead-letter topics."""


def _dlq_records(topic: str, broker: str | None) -> Iterator[Message]:
    url = _broker_url(broker)
    return read_topic(url, topic, load_settings(broker=url))


def _provenance(msg: Message) -> dict[str, str]:
    return {
        k.removeprefix("streamq-"): v.decode(errors="replace")
        for k, v in (msg.raw_headers or ())
        if k.startswith("streamq-")
    }


@dlq.command("list")
@click.argument("topic")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def dlq_list(topic: str, broker: str | None) -> None:
    """Count the records of dead-letter TOPIC by error type."""
    counts: Counter[str] = Counter()
    for msg in _dlq_records(topic, broker):
        counts[_provenance(msg).get("error-type", "(no streamq headers)")] += 1
    table = Table(title=f"{topic}: {sum(counts.values())} records")
    table.add_column("error type")
    table.add_column("records", justify="right")
    for error_type, n in counts.most_common():
        table.add_row(error_type, str(n))
    Console().print(table)


@dlq.command("show")
@click.argument("topic")
@click.option("-n", "limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def dlq_show(topic: str, limit: int, broker: str | None) -> None:
    """Print the first records of dead-letter TOPIC with where they came from and why."""
    for msg in itertools.islice(_dlq_records(topic, broker), limit):
        p = _provenance(msg)
        click.echo(
            f"{p.get('original-topic', '?')}[{p.get('original-partition', '?')}]"
            f"@{p.get('original-offset', '?')} attempts={p.get('attempts', '?')} "
            f"{p.get('error-type', '?')}: {p.get('error-message', '')}"
        )
        click.echo(f"    key={msg.key!r} value={_preview(msg.value)}")


def _preview(value: bytes | None, limit: int = 120) -> str:
    if value is None:
        return "None (tombstone)"
    text = repr(value[:limit])
    return text + ("..." if len(value) > limit else "")


@dlq.command("redrive")
@click.argument("topic")
@click.option("--to", "target", help="Topic to publish to; default each record's original.")
@click.option("--where", "where", help="Only records matching error-type=NAME.")
@click.option("--dry-run", is_flag=True, help="Count what would be sent; send nothing.")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def dlq_redrive(
    topic: str, target: str | None, where: str | None, dry_run: bool, broker: str | None
) -> None:
    """Publish dead-lettered records again (original key, value and headers), after a fix."""
    wanted = None
    if where is not None:
        field, _, wanted = where.partition("=")
        if field != "error-type" or not wanted:
            raise ConfigError(f"--where: expected error-type=NAME, got {where!r}")
    url = _broker_url(broker)
    selected = []
    for msg in _dlq_records(topic, broker):
        p = _provenance(msg)
        error_type = p.get("error-type", "")
        if wanted is not None and wanted not in (error_type, error_type.rsplit(".", 1)[-1]):
            continue
        destination = target or p.get("original-topic")
        if not destination:
            raise ConfigError(f"{topic}@{msg.offset}: no streamq-original-topic header; use --to")
        selected.append((destination, msg))
    if dry_run:
        for name, n in Counter(d for d, _ in selected).items():
            click.echo(f"would send {n} records to {name}")
        return
    with Producer(url) as producer:
        for destination, msg in track(selected, description="redriving",
                                      disable=not sys.stderr.isatty()):  # fmt: skip
            original = [(k, v) for k, v in (msg.raw_headers or ()) if not k.startswith("streamq-")]
            producer.send(destination, msg.value, key=msg.key, headers=original)
        unacked = producer.flush(60)
    if unacked:
        _fail(f"{unacked} of {len(selected)} records were not acknowledged", EXIT_RUNTIME)
    click.echo(f"sent {len(selected)} records", err=True)
