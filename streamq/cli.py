"""The ``streamq`` command line.

Every failure a user can cause (a bad ``MODULE:APP``, an unknown URL scheme, an unreachable
broker, a malformed input line) is one line on stderr and a non-zero exit, never a
traceback. Exit codes: 1 broker or runtime error, 2 bad usage or configuration, 3 shutdown
timed out with handlers still running, 4 the run ended with halted partitions.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import io
import itertools
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TransferSpeedColumn, track
from rich.table import Table

from . import __version__, logs
from .app import App
from .brokers import connect
from .credentials import scrub
from .dispatch import IMPLEMENTATION
from .errors import (
    ConfigError,
    MemberFenced,
    PartitionHalted,
    ShutdownTimeout,
    StreamqError,
    UnknownTopicOrPartition,
)
from .message import Message
from .metrics import serving
from .ops import LogView, open_view
from .producer import Producer
from .reader import read_topic
from .replay import RangeBackend, parse_time, plan, positions_from
from .runtime.supervisor import supervise
from .runtime.worker import (
    EXIT_CRITICAL,
    EXIT_FENCED,
    EXIT_HALTED,
    EXIT_RUNTIME,
    EXIT_SHUTDOWN_TIMEOUT,
    EXIT_USAGE,
    STOP_DEADLINE_GRACE,
    Worker,
    critical_line,
    run_worker,
)
from .settings import load_settings

__all__ = ["main"]


F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"streamq: error: {scrub(message)}", err=True)
    sys.exit(code)


def _errors_as_exit_codes(fn: F) -> F:
    """Turn streamq's errors into one stderr line and the documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc).replace("\n", "\n  "), EXIT_USAGE)
        except UnknownTopicOrPartition as exc:
            _fail(str(exc), EXIT_USAGE)
        except ShutdownTimeout as exc:
            _fail(str(exc), EXIT_SHUTDOWN_TIMEOUT)
        except PartitionHalted as exc:
            _fail(str(exc), EXIT_HALTED)
        except MemberFenced as exc:
            _fail(str(exc), EXIT_FENCED)
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
@_errors_as_exit_codes
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
            _fail(critical_line(critical), EXIT_CRITICAL)


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
    "--envelope",
    is_flag=True,
    help="Each line is {value, key?, headers?} (what `streamq tail --json` prints).",
)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Records per second.")
@click.option(
    "--file", "source", type=click.File("rb"), default="-", help="JSONL input; default stdin."
)
@_errors_as_exit_codes
def produce(
    topic: str,
    broker: str | None,
    key_field: str | None,
    envelope: bool,
    rate: float | None,
    source: IO[bytes],
) -> None:
    """Send one record per JSON line of the input to TOPIC."""
    url = _broker_url(broker)
    _warn_memory(url)
    name = getattr(source, "name", "stdin")
    if key_field and envelope:
        raise ConfigError("--key-field and --envelope: the envelope carries its own key")
    size = _size_of(source)
    sent = 0
    started = time.monotonic()
    with Producer(url) as producer, _bytes_progress(size, f"producing to {topic}") as advance:
        try:
            for lineno, line, obj in _json_lines(source, name):
                where = f"{name}:{lineno}"
                if envelope:
                    value, key, headers = _from_envelope(obj, where)
                    producer.send(topic, value, key=key, headers=headers)
                else:
                    producer.send(
                        topic, line, key=_key_of(obj, key_field, where) if key_field else None
                    )
                sent += 1
                advance(len(line) + 1)
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {sent} records were sent before it") from None
        unacked = producer.flush(30.0)
    if unacked:
        _fail(f"{unacked} of {sent} records were not acknowledged by the broker", EXIT_RUNTIME)
    click.echo(f"sent {sent} records to {topic}", err=True)


def _size_of(source: IO[bytes]) -> int | None:
    try:
        return os.fstat(source.fileno()).st_size or None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def _bytes_progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar for large files on a terminal; a no-op otherwise."""
    if total is None or total < 1 << 20 or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


def _from_envelope(obj: Any, where: str) -> tuple[bytes | None, bytes | None, list[Any] | None]:
    if not isinstance(obj, dict) or ("value" not in obj and "value_base64" not in obj):
        raise ConfigError(f"{where}: an envelope needs a 'value' or 'value_base64' field")
    if obj.get("value_base64") is not None:
        value: bytes | None = base64.b64decode(obj["value_base64"])
    else:
        value = None if obj.get("value") is None else orjson.dumps(obj["value"])
    key = obj.get("key")
    headers = obj.get("headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{where}: 'headers' must be an object of strings")
    return (
        value,
        key.encode() if isinstance(key, str) else None,
        [(k, str(v).encode()) for k, v in headers.items()] or None,
    )


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


# -- operator tools: replay, offsets, lag, tail ------------------------------------------------


def _view(broker: str | None) -> LogView:
    url = _broker_url(broker)
    return open_view(url, load_settings(broker=url))


def _ms_to_iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


@cli.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--topic", required=True, help="The topic whose handler to replay.")
@click.option("--from-beginning", is_flag=True)
@click.option("--from-offset", help="N (every partition) or P:N[,P:N...].")
@click.option("--from-time", help="ISO-8601 time (naive = local) or epoch ms.")
@click.option("--to-offset", help="Exclusive end: N or P:N[,P:N...]; default the end now.")
@click.option("--to-time", help="Exclusive end as a time.")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True)
@click.option("--group", help="Which of the app's groups, if several handle the topic.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Records per second.")
@click.option(
    "--dedup/--no-dedup",
    default=False,
    show_default=True,
    help="Keep the handler's dedup store (which skips records already handled).",
)
@click.option("--dry-run", is_flag=True, help="Print the ranges and counts; handle nothing.")
@click.option("--broker", help="Broker URL; overrides the app and STREAMQ_BROKER.")
@_errors_as_exit_codes
def replay(
    app_spec: str,
    topic: str,
    from_beginning: bool,
    from_offset: str | None,
    from_time: str | None,
    to_offset: str | None,
    to_time: str | None,
    partitions: tuple[int, ...],
    group: str | None,
    rate: float | None,
    dedup: bool,
    dry_run: bool,
    broker: str | None,
) -> None:
    """Run MODULE:APP's handler for --topic over an exact range; no group position moves."""
    app = load_app(app_spec)
    overrides: dict[str, Any] = {"crash_limit": 0}
    if broker is not None:
        overrides["broker"] = broker
    app.configure(**overrides)
    specs = {g: s for (g, t), s in app.handlers.items() if t == topic}
    if not specs:
        raise ConfigError(f"{app_spec} has no handler for topic {topic!r}")
    if group is None and len(specs) > 1:
        raise ConfigError(f"several groups handle {topic!r} ({', '.join(sorted(specs))}): "
                          "pick one with --group")  # fmt: skip
    if group is not None and group not in specs:
        raise ConfigError(f"no handler of group {group!r} for {topic!r}")
    group = group or next(iter(specs))
    spec = specs[group] if dedup else dataclasses.replace(specs[group], dedup=None)
    view = open_view(app.settings.broker, app.settings)
    try:
        ranges = plan(view, topic, from_beginning=from_beginning, from_offset=from_offset,
                      from_time=from_time, to_offset=to_offset, to_time=to_time,
                      partitions=partitions)  # fmt: skip
        total = sum(r.records for r in ranges)
        table = Table(title=f"replay {topic} with {spec.name} ({total} records)")
        for column in ("partition", "from", "to (exclusive)", "records"):
            table.add_column(column, justify="right")
        for r in ranges:
            table.add_row(str(r.partition), str(r.start), str(r.end), str(r.records))
        Console(stderr=not dry_run).print(table)
        if dry_run:
            return
        backend = RangeBackend(view, topic, ranges, rate)
        worker = Worker(app, 0.0, groups={group: {topic: spec}}, backends={group: backend})
        stats = app.stats
        with _count_progress(total, f"replaying {topic}") as show:
            watcher = threading.Thread(
                target=_watch_stats, args=(stats, topic, show, worker), daemon=True
            )
            watcher.start()
            run_worker(app, 0.0, worker)
    finally:
        view.close()
    done = stats.handled[topic] + stats.dead_lettered[topic]
    click.echo(f"streamq: replayed {done} of {total} records ({stats.summary()})", err=True)


def _watch_stats(stats: Any, topic: str, show: Callable[[int], None], worker: Worker) -> None:
    while True:
        show(stats.handled[topic] + stats.dead_lettered[topic] + stats.deduplicated[topic])
        if all(r.closed.is_set() for r in worker.runners) and worker.runners:
            return
        time.sleep(0.2)


@contextlib.contextmanager
def _count_progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """Records, rate and ETA on a terminal; nothing otherwise."""
    if not sys.stderr.isatty() or total == 0:
        yield lambda n: None
        return
    columns = (*Progress.get_default_columns(), MofNCompleteColumn(), TransferSpeedColumn())
    with Progress(*columns[:-1], console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.update(task, completed=n)


@cli.group()
def offsets() -> None:
    """Move a stopped group's committed positions."""


@offsets.command("reset")
@click.option("--group", required=True)
@click.option("--topic", required=True)
@click.option("--to-earliest", is_flag=True)
@click.option("--to-latest", is_flag=True)
@click.option("--to-offset", help="N (every partition) or P:N[,P:N...].")
@click.option("--to-time", help="ISO-8601 time (naive = local) or epoch ms.")
@click.option("--dry-run", is_flag=True, help="Print the moves; change nothing.")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def offsets_reset(
    group: str,
    topic: str,
    to_earliest: bool,
    to_latest: bool,
    to_offset: str | None,
    to_time: str | None,
    dry_run: bool,
    broker: str | None,
) -> None:
    """Set GROUP's position on TOPIC, like kafka-consumer-groups --reset-offsets."""
    if sum((to_earliest, to_latest, to_offset is not None, to_time is not None)) != 1:
        raise ConfigError("give exactly one of --to-earliest, --to-latest, --to-offset, --to-time")
    view = _view(broker)
    try:
        bounds = view.bounds(topic)
        target = positions_from(view, topic, option="--to-offset" if to_offset else "--to-time",
                                offsets=to_offset, at_time=to_time, earliest=to_earliest,
                                latest=to_latest, bounds=bounds)  # fmt: skip
        for p, position in target.items():
            low, end = bounds[p]
            if position > end:
                raise ConfigError(f"--to-offset: {position} is beyond the end of {topic}[{p}] "
                                  f"(end {end})")  # fmt: skip
            target[p] = max(position, low)
        current = {pos.partition: pos for pos in view.positions(group, topic)}
        table = Table(title=f"{group} on {topic}" + (" (dry run)" if dry_run else ""))
        for column in ("partition", "current", "new", "end"):
            table.add_column(column, justify="right")
        for p, position in sorted(target.items()):
            now = current[p].committed if p in current else None
            table.add_row(str(p), "-" if now is None else str(now), str(position),
                          str(bounds[p][1]))  # fmt: skip
        if dry_run:
            Console().print(table)
            return
        members = view.members(group)
        if members:
            raise ConfigError(
                f"group {group!r} has {len(members)} active member(s): {', '.join(members)}; "
                "stop them first (a running member would overwrite the reset)"
            )
        view.set_positions(group, topic, target)
        Console().print(table)
    finally:
        view.close()


@cli.command()
@click.option("--group", required=True)
@click.option("--topic", help="Default: every topic the group has a position on.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def lag(group: str, topic: str | None, as_json: bool, broker: str | None) -> None:
    """Per partition: the group's committed position, the end, the lag, and pending (Redis)."""
    view = _view(broker)
    try:
        topics = [topic] if topic else view.group_topics(group)
        rows: list[dict[str, Any]] = [
            {"topic": name, "partition": pos.partition, "committed": pos.committed,
             "end": pos.end, "lag": pos.lag, "pending": pos.pending}
            for name in topics
            for pos in view.positions(group, name)
        ]  # fmt: skip
    finally:
        view.close()
    if not any(r["committed"] is not None for r in rows):
        where = f" on {topic}" if topic else ""
        raise ConfigError(f"unknown group {group!r}: it has no committed position{where}")
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"lag of {group}: {sum(r['lag'] or 0 for r in rows)} records")
    for column in ("topic", "partition", "committed", "end", "lag", "pending"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for r in rows:
        table.add_row(*("-" if r[c] is None else str(r[c]) for c in
                        ("topic", "partition", "committed", "end", "lag", "pending")))  # fmt: skip
    Console().print(table)


@cli.command()
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@click.option("--group", "only", help="One group; default every group the broker knows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@_errors_as_exit_codes
def status(broker: str | None, only: str | None, as_json: bool) -> None:
    """Groups, members, who owns which partition, lag, and DLQ sizes, in one place."""
    url = _broker_url(broker)
    settings = load_settings(broker=url)
    view = _view(url)
    try:
        groups = [only] if only else view.groups()
        topics = view.topics()
        report = [_group_status(view, g, topics, settings.dlq_suffix) for g in groups]
    finally:
        view.close()
    if only and not report[0]["partitions"] and not report[0]["members"]:
        raise ConfigError(f"unknown group {only!r}: no members and no committed position")
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    offset_text = _offset_text(url)
    console = Console()
    if not report:
        console.print("no consumer groups")
    for g in report:
        lag = sum(r["lag"] or 0 for r in g["partitions"])
        members = ", ".join(g["members"]) or "none"
        table = Table(
            title=f"group {g['group']}: {len(g['members'])} member(s), lag {lag}",
            caption=f"members: {members}",
        )
        columns = ("topic", "partition", "owner", "committed", "end", "lag", "pending")
        for column in columns:
            left = column in ("topic", "owner")
            table.add_column(column, justify="left" if left else "right", overflow="fold")
        for r in g["partitions"]:
            shown = {**r, "committed": offset_text(r["committed"]), "end": offset_text(r["end"])}
            table.add_row(*("-" if shown[c] is None else str(shown[c]) for c in columns))
        console.print(table)
        if g["dlq"]:
            dlq = Table(title=f"dead-letter topics of {g['group']}")
            dlq.add_column("topic")
            dlq.add_column("records", justify="right")
            for d in g["dlq"]:
                dlq.add_row(d["topic"], str(d["records"]))
            console.print(dlq)


def _offset_text(url: str) -> Callable[[int | None], str | None]:
    """Redis offsets are entry IDs in integer form: show them as IDs (``ms-seq``)."""
    if not url.startswith(("redis://", "rediss://")):
        return lambda o: None if o is None else str(o)
    from .brokers.redis_streams import offset_to_id

    return lambda o: None if o is None else offset_to_id(o)


def _group_status(
    view: LogView, group: str, topics: dict[str, int], dlq_suffix: str
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    dlq: list[dict[str, Any]] = []
    for name in view.group_topics(group):
        owners = view.owners(group, name)
        rows.extend(
            {"topic": name, "partition": pos.partition, "owner": owners.get(pos.partition),
             "committed": pos.committed, "end": pos.end, "lag": pos.lag, "pending": pos.pending}
            for pos in view.positions(group, name)
        )  # fmt: skip
        dead = f"{name}{dlq_suffix}"
        if dead in topics:
            size = sum(
                view.count(dead, p, low, high) for p, (low, high) in view.bounds(dead).items()
            )
            dlq.append({"topic": dead, "records": size})
    return {"group": group, "members": view.members(group), "partitions": rows, "dlq": dlq}


@cli.command()
@click.argument("topic")
@click.option("-n", "count", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True)
@click.option("--from-time", help="Start at this time instead of the last N records.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--broker", help="Broker URL; default STREAMQ_BROKER.")
@_errors_as_exit_codes
def tail(
    topic: str,
    count: int,
    follow: bool,
    partitions: tuple[int, ...],
    from_time: str | None,
    as_json: bool,
    broker: str | None,
) -> None:
    """Print the last records of TOPIC with their coordinates, key and headers."""
    view = _view(broker)
    try:
        bounds = view.bounds(topic)
        for p in partitions:
            if p not in bounds:
                raise ConfigError(f"--partition: {topic} has no partition {p}")
        chosen = list(partitions) or sorted(bounds)
        if from_time is not None:
            found = view.offsets_for_time(topic, parse_time(from_time, "--from-time"))
            starts = {p: bounds[p][1] if found.get(p) is None else int(found[p] or 0)
                      for p in chosen}  # fmt: skip
        else:
            starts = {p: view.last_n_start(topic, p, count) for p in chosen}
        ends: dict[int, int | None] = {p: bounds[p][1] for p in chosen}
        backlog = [m for batch in view.read(topic, {p: (starts[p], ends[p]) for p in chosen})
                   for m in batch]  # fmt: skip
        backlog.sort(key=lambda m: (m.timestamp or 0, m.partition, m.offset))
        if from_time is None:
            backlog = backlog[-count:] if count else []
        for msg in backlog:
            _print_record(msg, as_json)
        if follow:
            resume = {p: (bounds[p][1], None) for p in chosen}
            for batch in view.read(topic, resume):  # type: ignore[arg-type]
                for msg in batch:
                    _print_record(msg, as_json)
    finally:
        view.close()


def _print_record(msg: Message, as_json: bool) -> None:
    headers = {k: v.decode(errors="replace") for k, v in (msg.raw_headers or ())}
    key = msg.key.decode(errors="replace") if msg.key is not None else None
    value: Any = None
    is_json = False
    if msg.value is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            value, is_json = orjson.loads(msg.value), True
    if as_json:
        doc: dict[str, Any] = {"topic": msg.topic, "partition": msg.partition,
                               "offset": msg.offset, "timestamp": msg.timestamp, "key": key,
                               "headers": headers, "value": value}  # fmt: skip
        if msg.value is not None and not is_json:
            doc["value_base64"] = base64.b64encode(msg.value).decode()
        click.echo(orjson.dumps(doc).decode())
        return
    click.echo(
        click.style(f"{msg.topic}[{msg.partition}]@{msg.offset}", bold=True)
        + f" {_ms_to_iso(msg.timestamp)} key={key!r}"
        + (f" headers={headers}" if headers else "")
    )
    if msg.value is None:
        click.echo("  (null: tombstone)")
    elif is_json:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        click.echo("\n".join("  " + line for line in text.splitlines()))
    else:
        click.echo(f"  (not JSON, {len(msg.value)} bytes) {_preview(msg.value, 200)}")


@cli.command()
@click.option(
    "--broker",
    default="memory://bench",
    show_default=True,
    help="memory://NAME, kafka://host:port or redis://host:port/db.",
)
@click.option("--messages", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Payload bytes per record (JSON).",
)
@click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--handler", default="json", show_default=True, help="noop, json, pydantic, cpu or sleep:MS."
)
@click.option(
    "--executor",
    type=click.Choice(["inline", "asyncio", "threads", "processes"]),
    default="inline",
    show_default=True,
)
@click.option(
    "--ordering", type=click.Choice(["partition", "key"]), default="partition", show_default=True
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--dedup", default="none", show_default=True, help="none, memory or redis://...")
@click.option(
    "--metrics", is_flag=True, help="Run streamq with Prometheus metrics on (as --metrics-port)."
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Raw and streamq drains alternate this many times; medians are reported.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop a drain after this long even if the backlog is not drained.",
)
@click.option("--latency-messages", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--latency-rate", type=click.FloatRange(min=1), default=2000.0, show_default=True)
@click.option("--no-raw", is_flag=True, help="Skip the raw client loop (streamq only).")
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the full result (every drain and the summary) here.",
)
@_errors_as_exit_codes
def bench(
    broker: str,
    messages: int,
    size: int,
    partitions: int,
    keys: int,
    handler: str,
    executor: str,
    ordering: str,
    workers: int,
    dedup: str,
    metrics: bool,
    rounds: int,
    max_seconds: float | None,
    latency_messages: int,
    latency_rate: float,
    no_raw: bool,
    json_file: str | None,
) -> None:
    """Measure streamq against the raw client loop on the same records, in the same run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from .bench import BenchSpec, run_bench

    spec = BenchSpec(
        broker=broker, messages=messages, size=size, partitions=partitions, keys=keys,
        handler=handler, executor=executor, ordering=ordering, workers=workers, dedup=dedup,
        metrics=metrics, rounds=rounds, max_seconds=max_seconds, latency_messages=latency_messages,
        latency_rate=latency_rate, raw=not no_raw,
    )  # fmt: skip
    spec.validate()
    console = Console(stderr=True)
    console.print(f"streamq bench: dispatch core [bold]{IMPLEMENTATION}[/], filling {messages:,} "
                  f"records of {size} B into {partitions} partitions on {broker} ...")  # fmt: skip
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def progress(side: str, done: int, total: int) -> None:
            if side not in tasks:
                tasks[side] = bar.add_task(f"{side:>8}", total=total)
            bar.update(tasks[side], completed=done)

        result = run_bench(spec, progress)
    table = Table(title=f"{handler} handler, {executor}, ordering={ordering}, workers={workers}")
    for col in ("side", "round", "msg/s", "MB/s", "CPU s/M", "p50 ms", "p99 ms", "RSS peak MB"):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(r["side"], str(r["round"]), f"{r['msg_s']:,}", str(r["mb_s"]),
                      str(r["cpu_s_per_m"]), str(r["p50_ms"]), str(r["p99_ms"]),
                      str(r["rss_peak_mb"]))  # fmt: skip
    Console().print(table)
    ratio = result["summary"].get("ratio")
    if ratio is not None:
        click.echo(f"streamq / raw (median of {rounds} rounds): {ratio:.3f}x "
                   f"[dispatch core: {IMPLEMENTATION}]")  # fmt: skip
    if json_file:
        with open(json_file, "wb") as f:
            f.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def main() -> None:
    cli(prog_name="streamq")


if __name__ == "__main__":
    main()
