"""Topics and their records: ``topics create/list``, ``produce`` and ``tail``.

``produce`` and ``tail`` live together because they share one format: what
``tail --json`` prints (a ``{value, key, headers}`` object per line, ``value_base64``
for bytes that are not JSON) is what ``produce --envelope`` reads back.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

import click
import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..brokers import connect, in_process
from ..errors import EXIT_RUNTIME, ConfigError
from ..message import Message
from ..producer import Producer
from ..replay import parse_time
from ..runtime.launch import load_app
from .common import (
    broker_option,
    broker_url,
    errors_as_exit_codes,
    fail,
    partitions_option,
    preview,
    rate_option,
    stages,
    time_option,
    view_of,
)


@click.group()
def topics() -> None:
    """Create and list topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), required=True)
@broker_option
@errors_as_exit_codes
def topics_create(name: str, partitions: int, broker: str | None) -> None:
    """Create topic NAME with P partitions."""
    url = broker_url(broker)
    _warn_memory(url)
    admin = connect(url).admin()
    try:
        admin.create_topic(name, partitions)
    finally:
        admin.close()
    click.echo(f"created {name} with {partitions} partitions")


@topics.command("list")
@broker_option
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:APP",
    help="Show the app's pipeline stages: which handler reads each topic and which writes it "
    "(its handlers' outputs=).",
)
@errors_as_exit_codes
def topics_list(broker: str | None, app_spec: str | None) -> None:
    """List topics and their partition counts (with --app, the pipeline's stages)."""
    app = load_app(app_spec) if app_spec else None
    url = broker_url(broker) if app is None or broker is not None else app.settings.broker
    admin = connect(url).admin()
    try:
        known = admin.list_topics()
    finally:
        admin.close()
    if app is None:
        for name, count in sorted(known.items()):
            click.echo(f"{name}\t{count}")
        return
    table = Table(title=f"topics of {url.split('://', 1)[0]}:// and the stages of {app_spec}")
    for column in ("topic", "partitions", "read by", "written by"):
        table.add_column(column, justify="right" if column == "partitions" else "left")
    edges = stages(app)
    for name in sorted(set(known) | set(edges)):
        read_by, written_by = edges.get(name, ([], []))
        partitions = str(known[name]) if name in known else "(missing)"
        table.add_row(name, partitions, ", ".join(read_by) or "-", ", ".join(written_by) or "-")
    Console().print(table)


@click.command()
@click.argument("topic")
@broker_option
@click.option("--key-field", help="Use this field of each JSON object as the record key.")
@click.option(
    "--envelope",
    is_flag=True,
    help="Each line is {value, key?, headers?} (what `streamq tail --json` prints).",
)
@rate_option
@click.option(
    "--file", "source", type=click.File("rb"), default="-", help="JSONL input; default stdin."
)
@errors_as_exit_codes
def produce(
    topic: str,
    broker: str | None,
    key_field: str | None,
    envelope: bool,
    rate: float | None,
    source: IO[bytes],
) -> None:
    """Send one record per JSON line of the input to TOPIC."""
    url = broker_url(broker)
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
        fail(f"{unacked} of {sent} records were not acknowledged by the broker", EXIT_RUNTIME)
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
    if in_process(url):
        click.echo(
            "streamq: warning: memory:// lives only inside this process; "
            "what this command writes is gone when it exits",
            err=True,
        )


@click.command()
@click.argument("topic")
@click.option("-n", "count", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
@partitions_option
@time_option("--from-time", "Start at this time instead of the last N records")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@broker_option
@errors_as_exit_codes
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
    view = view_of(broker)
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
            _print_record(msg, as_json, view.offset_text)
        if follow:
            resume = {p: (bounds[p][1], None) for p in chosen}
            for batch in view.read(topic, resume):  # type: ignore[arg-type]
                for msg in batch:
                    _print_record(msg, as_json, view.offset_text)
    finally:
        view.close()


def _print_record(msg: Message, as_json: bool, offset_text: Callable[[int], str]) -> None:
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
        click.style(f"{msg.topic}[{msg.partition}]@{offset_text(msg.offset)}", bold=True)
        + f" {_ms_to_iso(msg.timestamp)} key={key!r}"
        + (f" headers={headers}" if headers else "")
    )
    if msg.value is None:
        click.echo("  (null: tombstone)")
    elif is_json:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        click.echo("\n".join("  " + line for line in text.splitlines()))
    else:
        click.echo(f"  (not JSON, {len(msg.value)} bytes) {preview(msg.value, 200)}")


def _ms_to_iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
