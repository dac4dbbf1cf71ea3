"""Going back over a topic: ``streamq replay`` and ``streamq offsets reset``.

Both turn the same position arguments (offsets, times, earliest/latest; parsed in
``streamq.replay``) into per-partition positions. ``replay`` runs an app's handler over the
range without moving any group position; ``offsets reset`` moves a stopped group's
committed positions instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TransferSpeedColumn
from rich.table import Table

from ..brokers.view import open_view
from ..errors import ConfigError
from ..replay import RangeBackend, plan, positions_from, refuse_past_end
from ..runtime.launch import load_app
from ..runtime.worker import Worker, run_worker
from .common import (
    app_argument,
    broker_option,
    errors_as_exit_codes,
    group_option,
    offsets_option,
    partitions_option,
    rate_option,
    time_option,
    view_of,
)


@click.command()
@app_argument
@click.option("--topic", required=True, help="The topic whose handler to replay.")
@click.option("--from-beginning", is_flag=True)
@offsets_option("--from-offset", "First record")
@time_option("--from-time", "Start at this time")
@offsets_option("--to-offset", "Exclusive end (default: the end now)")
@time_option("--to-time", "Exclusive end time")
@partitions_option
@click.option("--group", help="Which of the app's groups, if several handle the topic.")
@rate_option
@click.option(
    "--dedup/--no-dedup",
    default=False,
    show_default=True,
    help="Keep the handler's dedup store (which skips records already handled).",
)
@click.option("--dry-run", is_flag=True, help="Print the ranges and counts; handle nothing.")
@broker_option
@errors_as_exit_codes
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
            table.add_row(str(r.partition), view.offset_text(r.start), view.offset_text(r.end),
                          str(r.records))  # fmt: skip
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


@click.group()
def offsets() -> None:
    """Move a stopped group's committed positions."""


@offsets.command("reset")
@group_option
@click.option("--topic", required=True)
@click.option("--to-earliest", is_flag=True)
@click.option("--to-latest", is_flag=True)
@offsets_option("--to-offset", "The next record the group reads")
@time_option("--to-time", "Move the group to this time")
@click.option("--dry-run", is_flag=True, help="Print the moves; change nothing.")
@broker_option
@errors_as_exit_codes
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
    view = view_of(broker)
    try:
        bounds = view.bounds(topic)
        by = "--to-offset" if to_offset is not None else "--to-time"
        target = positions_from(view, topic, option=by, offsets=to_offset, at_time=to_time,
                                earliest=to_earliest, latest=to_latest, bounds=bounds)  # fmt: skip
        refuse_past_end(view, by, topic, target, bounds)
        target = {p: max(position, bounds[p][0]) for p, position in target.items()}
        current = {pos.partition: pos for pos in view.positions(group, topic)}
        table = Table(title=f"{group} on {topic}" + (" (dry run)" if dry_run else ""))
        for column in ("partition", "current", "new", "end"):
            table.add_column(column, justify="right")
        for p, position in sorted(target.items()):
            now = current[p].committed if p in current else None
            table.add_row(str(p), "-" if now is None else view.offset_text(now),
                          view.offset_text(position), view.offset_text(bounds[p][1]))  # fmt: skip
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
