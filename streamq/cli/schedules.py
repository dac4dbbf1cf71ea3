"""``streamq schedules list|pause|resume|trigger``: see and steer an app's periodic jobs.

``list`` reads the state the schedule's owner saved with its ownership (its last fired tick
per job, paused jobs, and who owns it since when) and adds each job's next tick from the
app's own definitions. The other three append a command to the schedule's topic, which only
the owner reads; they wait until it applied the command (the position it saves moves past
it), or say that no worker owns the schedule to apply it yet.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from ..brokers import connect, ensure_topic, in_process
from ..errors import ConfigError
from ..message import TopicPartition
from ..producer import Producer
from ..runtime.launch import load_app
from ..runtime.scheduler import ScheduleState, schedule_topic
from .common import app_argument, broker_option, errors_as_exit_codes

if TYPE_CHECKING:
    from ..app import App

# How long pause/resume/trigger wait for the owner to apply the command.
APPLY_WAIT = 10.0


@click.group()
def schedules() -> None:
    """List and steer an app's periodic jobs (``@app.every``)."""


def _app(app_spec: str, broker: str | None) -> App:
    app = load_app(app_spec)
    if broker is not None:
        app.configure(broker=broker)
    if not app.jobs:
        raise ConfigError(f"app {app.name!r} has no periodic jobs (@app.every)")
    if in_process(app.settings.broker):
        raise ConfigError(
            f"broker {app.settings.broker!r} lives inside one process; the schedule of a "
            "memory:// app can only be seen from that process (use Kafka or Redis)"
        )
    return app


def _state(app: App) -> tuple[int | None, ScheduleState | None]:
    topic = schedule_topic(app.name)
    consumer = connect(app.settings.broker, app.settings).consumer(topic, app.settings)
    try:
        offset, raw = consumer.load_state(TopicPartition(topic, 0))
    finally:
        consumer.close()
    return offset, (ScheduleState.decode(raw, offset) if raw else None)


@schedules.command("list")
@app_argument
@broker_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@errors_as_exit_codes
def list_(app_spec: str, broker: str | None, as_json: bool) -> None:
    """Each job: its schedule, last fired tick, next tick, and who owns the schedule."""
    report = schedule_report(_app(app_spec, broker))
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    print_schedule(Console(), report)


def schedule_report(app: App) -> dict[str, Any]:
    """The schedule's owner and each job's state, as ``list`` and ``status --app`` show them."""
    _, state = _state(app)
    now = round(time.time() * 1000)
    rows: list[dict[str, Any]] = []
    for name, job in app.jobs.items():
        js = state.jobs.get(name) if state is not None else None
        last = js.last if js is not None else None
        rows.append({
            "job": name,
            "schedule": job.schedule.describe(),
            "paused": bool(js and js.paused),
            "last_tick": _iso(last),
            "last_fired": _iso(js.fired_at if js is not None and js.fired_at else None),
            "next_tick": _iso(job.schedule.after(max(now, last or 0))),
            "missed": job.missed.value,
            "overlap": job.overlap.value,
        })  # fmt: skip
    owner = {"member": state.owner, "since": _iso(state.since)} if state else None
    return {"schedule": schedule_topic(app.name), "owner": owner, "jobs": rows}


def print_schedule(console: Console, report: dict[str, Any]) -> None:
    owner = report["owner"]
    who = f"{owner['member']} since {owner['since']}" if owner else "no member has owned it yet"
    table = Table(title=f"schedule {report['schedule']}", caption=f"owner: {who}")
    columns = ("job", "schedule", "paused", "last_tick", "last_fired", "next_tick")
    for column in columns:
        table.add_column(column.replace("_", " "), overflow="fold")
    for r in report["jobs"]:
        table.add_row(*(str(r[c]) if r[c] is not None else "-" for c in columns))
    console.print(table)


def _command(cmd: str, app_spec: str, name: str, broker: str | None) -> None:
    app = _app(app_spec, broker)
    if name not in app.jobs:
        known = ", ".join(sorted(app.jobs))
        raise ConfigError(f"app {app.name!r} has no job {name!r} (its jobs: {known})")
    topic = schedule_topic(app.name)
    ensure_topic(connect(app.settings.broker, app.settings), topic, 1, compact=True)
    with Producer(app.settings.broker, kafka=app.settings.kafka) as producer:
        sent = producer.send(topic, {"cmd": cmd, "job": name}, key=name).result(30)
    deadline = time.monotonic() + APPLY_WAIT
    while time.monotonic() < deadline:
        _, state = _state(app)
        if state is not None and state.applied > sent.offset:
            click.echo(f"job {name}: {cmd} applied by {state.owner}")
            return
        time.sleep(0.2)
    click.echo(
        f"job {name}: {cmd} sent; no worker applied it within {APPLY_WAIT:.0f}s (is one "
        "running?); the schedule's next owner applies it"
    )


@schedules.command()
@app_argument
@click.argument("name")
@broker_option
@errors_as_exit_codes
def pause(app_spec: str, name: str, broker: str | None) -> None:
    """Stop firing NAME (its ticks are skipped) until ``resume``."""
    _command("pause", app_spec, name, broker)


@schedules.command()
@app_argument
@click.argument("name")
@broker_option
@errors_as_exit_codes
def resume(app_spec: str, name: str, broker: str | None) -> None:
    """Fire NAME again from its next tick (the ticks skipped while paused stay skipped)."""
    _command("resume", app_spec, name, broker)


@schedules.command()
@app_argument
@click.argument("name")
@broker_option
@errors_as_exit_codes
def trigger(app_spec: str, name: str, broker: str | None) -> None:
    """Fire NAME once now, besides its schedule (its Tick says triggered=True)."""
    _command("trigger", app_spec, name, broker)


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
