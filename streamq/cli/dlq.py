"""``streamq dlq list/show/redrive``: read dead-letter topics and publish their records again.

The provenance comes from the ``streamq-*`` headers the worker adds when it dead-letters a
record (original topic, partition and offset, attempts, error type and message); a redrive
strips them and sends the original key, value and headers. Offsets are printed as the
broker's view prints them (Redis: entry IDs), the header's integer included.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections import Counter
from collections.abc import Callable, Generator, Iterator

import click
from rich.console import Console
from rich.progress import track
from rich.table import Table

from ..brokers import in_process
from ..brokers.view import read_topic
from ..errors import EXIT_RUNTIME, ConfigError
from ..message import Message
from ..producer import Producer
from ..settings import load_settings
from .common import broker_option, broker_url, errors_as_exit_codes, fail, preview, view_of

OffsetText = Callable[[int], str]


@click.group()
def dlq() -> None:
    """Inspect and redrive dead-letter topics."""


@contextlib.contextmanager
def _dlq_records(topic: str, broker: str | None) -> Iterator[tuple[Iterator[Message], OffsetText]]:
    """The records of ``topic``, and how its broker shows offsets (memory://: as integers)."""
    url = broker_url(broker)
    if in_process(url):
        yield read_topic(url, topic, load_settings(broker=url)), str
        return
    view = view_of(url)
    records = view.read_topic(topic)
    try:
        yield records, view.offset_text
    finally:
        if isinstance(records, Generator):  # a read stopped early (-n, an error) ends first:
            records.close()  # on Kafka it unassigns, which a closed consumer cannot
        view.close()


def _provenance(msg: Message) -> dict[str, str]:
    return {
        k.removeprefix("streamq-"): v.decode(errors="replace")
        for k, v in (msg.raw_headers or ())
        if k.startswith("streamq-")
    }


def _origin(p: dict[str, str], offset_text: OffsetText) -> str:
    offset = p.get("original-offset", "?")
    if offset.isascii() and offset.isdigit():
        offset = offset_text(int(offset))
    return f"{p.get('original-topic', '?')}[{p.get('original-partition', '?')}]@{offset}"


@dlq.command("list")
@click.argument("topic")
@broker_option
@errors_as_exit_codes
def dlq_list(topic: str, broker: str | None) -> None:
    """Count the records of dead-letter TOPIC by error type."""
    counts: Counter[str] = Counter()
    with _dlq_records(topic, broker) as (records, _):
        for msg in records:
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
@broker_option
@errors_as_exit_codes
def dlq_show(topic: str, limit: int, broker: str | None) -> None:
    """Print the first records of dead-letter TOPIC with where they came from and why."""
    with _dlq_records(topic, broker) as (records, offset_text):
        for msg in itertools.islice(records, limit):
            p = _provenance(msg)
            click.echo(f"{_origin(p, offset_text)} attempts={p.get('attempts', '?')} "
                       f"{p.get('error-type', '?')}: {p.get('error-message', '')}")  # fmt: skip
            click.echo(f"    key={msg.key!r} value={preview(msg.value)}")


@dlq.command("redrive")
@click.argument("topic")
@click.option("--to", "target", help="Topic to publish to; default each record's original.")
@click.option("--where", "where", help="Only records matching error-type=NAME.")
@click.option("--dry-run", is_flag=True, help="Count what would be sent; send nothing.")
@broker_option
@errors_as_exit_codes
def dlq_redrive(
    topic: str, target: str | None, where: str | None, dry_run: bool, broker: str | None
) -> None:
    """Publish dead-lettered records again (original key, value and headers), after a fix."""
    wanted = None
    if where is not None:
        field, _, wanted = where.partition("=")
        if field != "error-type" or not wanted:
            raise ConfigError(f"--where: expected error-type=NAME, got {where!r}")
    url = broker_url(broker)
    selected = []
    with _dlq_records(topic, broker) as (records, offset_text):
        for msg in records:
            p = _provenance(msg)
            error_type = p.get("error-type", "")
            if wanted is not None and wanted not in (error_type, error_type.rsplit(".", 1)[-1]):
                continue
            destination = target or p.get("original-topic")
            if not destination:
                raise ConfigError(f"{topic}[{msg.partition}]@{offset_text(msg.offset)}: no "
                                  "streamq-original-topic header; use --to")  # fmt: skip
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
        fail(f"{unacked} of {len(selected)} records were not acknowledged", EXIT_RUNTIME)
    click.echo(f"sent {len(selected)} records", err=True)
