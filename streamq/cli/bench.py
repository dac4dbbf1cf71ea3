"""``streamq bench``: the command's options, progress bars and result table.

The benchmark itself (filling the topic, the raw and streamq drains, the measurements) is
``streamq.bench``; this module only turns options into a ``BenchSpec`` and prints what
``run_bench`` returns.
"""

from __future__ import annotations

from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..dispatch import IMPLEMENTATION
from .common import errors_as_exit_codes


@click.command()
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
    "--ordering",
    type=click.Choice(["partition", "key", "none"]),
    default="partition",
    show_default=True,
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="With --ordering none: records at once per worker (the raw side: a thread pool of "
    "that size over each batch when the work sleeps).",
)
@click.option(
    "--group-type",
    type=click.Choice(["classic", "share"]),
    default="classic",
    show_default=True,
    help="share: a Kafka 4.2 share group (the raw side: ShareConsumer) or Redis competing "
    "consumers; with --ordering none.",
)
@click.option(
    "--batch",
    is_flag=True,
    help="streamq side: a batch=True handler that loops over its records, as the raw loop "
    "does (--handler noop or json).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--transform",
    is_flag=True,
    help="Consume-transform-produce: one output per input to a fresh topic; a drain ends when "
    "every output is visible (Kafka, Redis; --handler json or cpu).",
)
@click.option(
    "--guarantee",
    type=click.Choice(["at_least_once", "exactly_once"]),
    default="at_least_once",
    show_default=True,
    help="With --transform: what both sides commit (the raw side as a client user would).",
)
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
@errors_as_exit_codes
def bench(
    broker: str,
    messages: int,
    size: int,
    partitions: int,
    keys: int,
    handler: str,
    executor: str,
    ordering: str,
    concurrency: int | None,
    group_type: str,
    batch: bool,
    workers: int,
    transform: bool,
    guarantee: str,
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
    from ..bench import BenchSpec, run_bench

    spec = BenchSpec(
        broker=broker, messages=messages, size=size, partitions=partitions, keys=keys,
        handler=handler, executor=executor, ordering=ordering, concurrency=concurrency,
        group_type=group_type, batch=batch, workers=workers, dedup=dedup,
        metrics=metrics, rounds=rounds, max_seconds=max_seconds, latency_messages=latency_messages,
        latency_rate=latency_rate, raw=not no_raw, transform=transform, guarantee=guarantee,
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
    title = f"{handler} handler, {executor}, ordering={ordering}, workers={workers}"
    if concurrency is not None or group_type == "share":
        title += f", concurrency={concurrency or 'default'}, {group_type} group"
    if transform:
        title += f", transform, {guarantee}"
    if batch:
        title += ", batch handler"
    table = Table(title=title)
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
    by_thread = [
        f"{side}: " + ", ".join(f"{role} {cpu}" for role, cpu in roles.items())
        for side in ("raw", "streamq")
        if (roles := result["summary"].get(side, {}).get("thread_cpu_s_per_m"))
    ]
    if by_thread:
        click.echo("CPU s/M by thread (medians): " + "; ".join(by_thread))
    if json_file:
        with open(json_file, "wb") as f:
            f.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))
