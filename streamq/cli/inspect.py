"""Read-only views of consumer groups: ``streamq lag`` and ``streamq status``.

Both read committed positions, ends and pending counts through the broker's ``LogView``
and change nothing; ``status`` adds members, partition owners and dead-letter topic sizes.
A share group's "committed" position is where its unfinished records start (Kafka: the
share-partition start offset, as the broker saved it: Kafka writes it when the group next
takes records, so it trails the last acknowledgements; Redis: past the last entry delivered,
with the delivered but unacknowledged ones as pending), and every member reads every
partition ("shared by N").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from ..brokers import in_process
from ..brokers.view import LogView
from ..errors import ConfigError
from ..runtime.launch import load_app
from ..settings import load_settings
from .common import broker_option, broker_url, errors_as_exit_codes, group_option, view_of
from .schedules import print_schedule, schedule_report


@click.command()
@group_option
@click.option("--topic", help="Default: every topic the group has a position on.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@broker_option
@errors_as_exit_codes
def lag(group: str, topic: str | None, as_json: bool, broker: str | None) -> None:
    """Per partition: the group's committed position, the end, the lag, and pending (Redis)."""
    view = view_of(broker)
    offset_text = view.offset_text
    try:
        kind = view.group_type(group)
        topics = [topic] if topic else view.group_topics(group)
        rows: list[dict[str, Any]] = [
            {"topic": name, "partition": pos.partition, "committed": pos.committed,
             "end": pos.end, "lag": pos.lag, "pending": pos.pending, "group_type": kind}
            for name in topics
            for pos in view.positions(group, name)
        ]  # fmt: skip
    finally:
        view.close()
    if kind != "share" and not any(r["committed"] is not None for r in rows):
        where = f" on {topic}" if topic else ""
        raise ConfigError(f"unknown group {group!r}: it has no committed position{where}")
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    title = f"lag of {group}: {sum(r['lag'] or 0 for r in rows)} records"
    if kind == "share":
        title += " (share group: from where its unfinished records start, as last saved)"
    table = Table(title=title)
    for column in ("topic", "partition", "committed", "end", "lag", "pending"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for r in rows:
        shown = {**r, "committed": _text(r["committed"], offset_text),
                 "end": _text(r["end"], offset_text)}  # fmt: skip
        table.add_row(*("-" if shown[c] is None else str(shown[c]) for c in
                        ("topic", "partition", "committed", "end", "lag", "pending")))  # fmt: skip
    Console().print(table)


@click.command()
@broker_option
@click.option("--group", "only", help="One group; default every group the broker knows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:APP",
    help="Name each group's pipeline stage (the topics its handlers read and write), and "
    "show the app's periodic jobs: last and next tick, and who owns the schedule.",
)
@errors_as_exit_codes
def status(broker: str | None, only: str | None, as_json: bool, app_spec: str | None) -> None:
    """Groups, members, who owns which partition, lag, and DLQ sizes, in one place."""
    app = load_app(app_spec) if app_spec else None
    if broker is None and app is not None:
        broker = app.settings.broker
    url = broker_url(broker)
    settings = load_settings(broker=url)
    view = view_of(url)
    offset_text = view.offset_text
    try:
        groups = [only] if only else view.groups()
        topics = view.topics()
        report = [_group_status(view, g, topics, settings.dlq_suffix) for g in groups]
    finally:
        view.close()
    if only and not report[0]["partitions"] and not report[0]["members"]:
        raise ConfigError(f"unknown group {only!r}: no members and no committed position")
    if app is not None:
        for g in report:
            specs = [s for s in app.handlers.values() if s.group == g["group"]]
            g["stage"] = {
                "reads": sorted({s.topic for s in specs}),
                "writes": sorted({t for s in specs for t in s.outputs or ()}),
            }
    schedule = None
    if app is not None and app.jobs and not in_process(url):
        app.configure(broker=url)
        schedule = schedule_report(app)
        for g in report:  # the schedule's own group: its members compete for the schedule
            if g["group"] == schedule["schedule"]:
                g["schedule"] = schedule
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    if schedule is not None:
        print_schedule(console, schedule)
    if not report:
        console.print("no consumer groups")
    for g in report:
        lag = sum(r["lag"] or 0 for r in g["partitions"])
        members = ", ".join(g["members"]) or "none"
        caption = f"members: {members}"
        if g["group_type"] == "share":
            caption += "; a share group: every member reads every partition"
        stage = g.get("stage")
        if stage is not None:
            reads = ", ".join(stage["reads"]) or "nothing of this app"
            caption += f"; stage: reads {reads}, writes {', '.join(stage['writes']) or '-'}"
        table = Table(
            title=f"group {g['group']}: {len(g['members'])} member(s), lag {lag}",
            caption=caption,
        )
        columns = ("topic", "partition", "owner", "committed", "end", "lag", "pending")
        for column in columns:
            left = column in ("topic", "owner")
            table.add_column(column, justify="left" if left else "right", overflow="fold")
        for r in g["partitions"]:
            shown = {**r, "committed": _text(r["committed"], offset_text),
                     "end": _text(r["end"], offset_text)}  # fmt: skip
            table.add_row(*("-" if shown[c] is None else str(shown[c]) for c in columns))
        console.print(table)
        if g["dlq"]:
            dlq = Table(title=f"dead-letter topics of {g['group']}")
            dlq.add_column("topic")
            dlq.add_column("records", justify="right")
            for d in g["dlq"]:
                dlq.add_row(d["topic"], str(d["records"]))
            console.print(dlq)


def _text(offset: int | None, offset_text: Callable[[int], str]) -> str | None:
    """Tables show offsets as the broker's users know them (Redis: entry IDs); JSON keeps ints."""
    return None if offset is None else offset_text(offset)


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
    return {"group": group, "group_type": view.group_type(group), "members": view.members(group),
            "partitions": rows, "dlq": dlq}  # fmt: skip
