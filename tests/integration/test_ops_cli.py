"""The operator's CLI on both brokers: replay, offsets reset, lag, tail and produce.

Every command runs as a real ``streamq`` process against the real broker; handler calls are
read from the ledger the test app appends to.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

import streamq
from streamq.brokers.redis.entries import id_to_offset
from tests.integration.helpers import (
    AppSpec,
    app_env,
    ledger_app,
    read_ledger,
    start_worker,
    streamq_cmd,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.timeout(300)]


def cli(cwd: Path, env: dict[str, str], *args: str, stdin: bytes | None = None):
    env = {**env, "STREAMQ_BROKER": env["BROKER"]}  # the operator commands' default broker
    return subprocess.run(streamq_cmd(*args), cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=180)  # fmt: skip


def replay(cwd: Path, env: dict[str, str], app: AppSpec, *args: str):
    """``streamq replay`` of ``app``: its settings in the env, as a worker of it has them."""
    return cli(cwd, app.environ(env), "replay", app.spec, *args)


def ids(ledger: Path) -> list[int]:
    return sorted(e.id for e in read_ledger(ledger))


def records(start: int, stop: int) -> list[tuple[int, bytes]]:
    return [(i, orjson.dumps({"i": i, "k": f"k{i % 20}"})) for i in range(start, stop)]


def test_replay_by_time_and_from_beginning_leaves_the_live_group_alone(
    broker, tmp_path: Path
) -> None:
    topic = broker.topic(3)
    coords = broker.produce(topic, records(0, 2500))
    time.sleep(1.0)
    between = datetime.now(UTC).isoformat()
    time.sleep(1.0)
    coords |= broker.produce(topic, records(2500, 5000))
    group = unique("live")
    spec = ledger_app()
    env = lambda ledger: app_env(broker.url, topic, group, tmp_path / ledger)  # noqa: E731

    code, out = start_worker(tmp_path, spec, env("live"), "--until-idle", "2").finish(180)
    assert code == 0, out
    assert ids(tmp_path / "live") == list(range(5000))
    ends = broker.ends(coords)
    assert broker.uncommitted(topic, group, ends) == {}

    done = replay(tmp_path, env("later"), spec, "--topic", topic, "--from-time", between)
    assert done.returncode == 0, done.stderr.decode()
    assert ids(tmp_path / "later") == list(range(2500, 5000)), "not exactly the later burst"

    done = replay(tmp_path, env("all"), spec, "--topic", topic, "--from-beginning")
    assert done.returncode == 0, done.stderr.decode()
    assert ids(tmp_path / "all") == list(range(5000)), "not every record exactly once"
    assert b"replayed 5000 of 5000" in done.stderr

    assert broker.uncommitted(topic, group, ends) == {}, "replay moved the live group"
    code, out = start_worker(tmp_path, spec, env("after"), "--until-idle", "2").finish(180)
    assert code == 0, out
    assert ids(tmp_path / "after") == [], "the live group handled records again after replays"


def test_replay_from_a_partition_offset_and_dry_run(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    coords = broker.produce(topic, records(0, 400))
    p0 = sorted((off, i) for i, (p, off) in coords.items() if p == 0)
    start_offset, expected = p0[10][0], sorted(i for _, i in p0[10:])
    spec = ledger_app()
    env = app_env(broker.url, topic, unique("g"), tmp_path / "ledger")

    dry = replay(tmp_path, env, spec, "--topic", topic, "--from-offset", f"0:{start_offset}",
                 "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr.decode()
    assert str(len(expected)) in dry.stdout.decode()
    assert ids(tmp_path / "ledger") == [], "--dry-run handled records"

    done = replay(tmp_path, env, spec, "--topic", topic, "--from-offset", f"0:{start_offset}")
    assert done.returncode == 0, done.stderr.decode()
    assert ids(tmp_path / "ledger") == expected
    assert min(e.offset for e in read_ledger(tmp_path / "ledger")) == start_offset


def test_offsets_reset_refuses_a_running_group_and_moves_a_stopped_one(
    broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    coords = broker.produce(topic, records(0, 300))
    group = unique("reset")
    spec = ledger_app()
    env = app_env(broker.url, topic, group, tmp_path / "first")
    reset = ("offsets", "reset", "--group", group, "--topic", topic, "--to-earliest")

    running = start_worker(tmp_path, spec, env)
    try:
        wait_until(lambda: len(read_ledger(tmp_path / "first")) == 300, 120, "the first pass")
        refused = cli(tmp_path, env, *reset)
        assert refused.returncode == 2, refused.stderr.decode()
        assert b"active member" in refused.stderr and b"Traceback" not in refused.stderr
        print(refused.stderr.decode())
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.finish(60)[0] == 0
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}

    dry = cli(tmp_path, env, *reset, "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    assert broker.uncommitted(topic, group, broker.ends(coords)) == {}, "--dry-run moved it"

    done = cli(tmp_path, env, *reset)
    assert done.returncode == 0, done.stderr.decode()
    second = {**env, "LEDGER": str(tmp_path / "second")}
    code, out = start_worker(tmp_path, spec, second, "--until-idle", "2").finish(180)
    assert code == 0, out
    assert ids(tmp_path / "second") == list(range(300)), "the reset did not rewind the group"


def test_lag_after_a_partial_run(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    broker.produce(topic, records(0, 100))
    group = unique("lag")
    spec = ledger_app()
    env = app_env(broker.url, topic, group, tmp_path / "ledger")
    code, out = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(180)
    assert code == 0, out
    coords = broker.produce(topic, records(100, 130))

    done = cli(tmp_path, env, "lag", "--group", group, "--topic", topic, "--json")
    assert done.returncode == 0, done.stderr.decode()
    rows = orjson.loads(done.stdout)
    assert sum(r["lag"] for r in rows) == 30
    ends = broker.ends(coords)
    assert {r["partition"]: r["end"] for r in rows} == ends
    table = cli(tmp_path, env, "lag", "--group", group)
    assert table.returncode == 0 and b"lag of" in table.stdout


def test_tail_and_produce_round_trip_records_with_headers(broker, tmp_path: Path) -> None:
    source, copy = broker.topic(1), broker.topic(1)
    with streamq.Producer(broker.url) as producer:
        for i in range(8):
            producer.send(source, {"i": i}, key=f"k{i}", headers=[("trace", f"t-{i}".encode())])
        producer.send(source, b"\xffnot json", key="raw", headers=[("kind", b"bytes")])
        assert producer.flush(60) == 0
    env = app_env(broker.url, source, "unused", tmp_path / "ledger")

    tailed = cli(tmp_path, env, "tail", source, "-n", "5", "--json")
    assert tailed.returncode == 0, tailed.stderr.decode()
    lines = tailed.stdout.splitlines()
    assert len(lines) == 5
    docs = [orjson.loads(line) for line in lines]
    assert [d["key"] for d in docs] == ["k4", "k5", "k6", "k7", "raw"]
    assert docs[0]["headers"] == {"trace": "t-4"} and docs[-1]["value_base64"]

    sent = cli(tmp_path, env, "produce", copy, "--envelope", stdin=tailed.stdout)
    assert sent.returncode == 0, sent.stderr.decode()
    again = cli(tmp_path, env, "tail", copy, "-n", "5", "--json")
    copied = [orjson.loads(line) for line in again.stdout.splitlines()]
    strip = lambda d: {k: d.get(k) for k in ("key", "value", "headers", "value_base64")}  # noqa: E731
    assert [strip(d) for d in copied] == [strip(d) for d in docs]

    pretty = cli(tmp_path, env, "tail", source, "-n", "2")
    assert pretty.returncode == 0 and b"not JSON" in pretty.stdout and b"trace" in pretty.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("replay", "{app}", "--topic", "{topic}", "--from-time", "yesterday-ish"),
         b"not an ISO-8601 time"),
        (("replay", "{app}", "--topic", "{topic}", "--from-offset", "4611686018427387904"),
         b"beyond the end"),
        (("replay", "{app}", "--topic", "nope", "--from-beginning"), b"no handler"),
        (("tail", "no-such-topic"), b"unknown topic"),
        (("lag", "--group", "no-such-group", "--topic", "{topic}"), b"unknown group"),
        (("offsets", "reset", "--group", "g", "--topic", "{topic}"), b"exactly one of"),
    ],
    ids=["bad-time", "offset-past-end", "no-handler", "unknown-topic", "unknown-group",
         "no-target"],
)  # fmt: skip
def test_bad_arguments_get_one_line_and_exit_2(broker, tmp_path: Path, args, says) -> None:
    topic = broker.topic(2)
    broker.produce(topic, records(0, 10))
    app = ledger_app()
    env = app.environ(app_env(broker.url, topic, unique("g"), tmp_path / "ledger"))
    done = cli(tmp_path, env, *(a.format(topic=topic, app=app.spec) for a in args))
    assert done.returncode == 2, (done.returncode, done.stderr.decode())
    err = done.stderr.decode()
    assert says.decode() in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# -- Redis shows entry IDs (issue 17), so replay and reset take them back ------------------------

WIDE = {"COLUMNS": "200"}  # rich tables in one line per row, whatever the terminal


def printed_ids(text: str, topic: str, partition: int) -> list[str]:
    """The entry IDs ``streamq tail`` printed for ``topic[partition]``, in log order."""
    found = re.findall(rf"^{re.escape(topic)}\[{partition}\]@(\d+-\d+) ", text, re.MULTILINE)
    return sorted(found, key=id_to_offset)


def lag_positions(text: str, topic: str) -> dict[int, str]:
    """Partition -> the committed entry ID in ``streamq lag``'s table."""
    rows = re.findall(rf"{re.escape(topic)}\s*[│|]\s*(\d+)\s*[│|]\s*(\d+-\d+)\s*[│|]", text)
    return {int(p): committed for p, committed in rows}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_redis_replay_and_reset_take_the_entry_ids_tail_and_lag_print(
    broker, tmp_path: Path
) -> None:
    topic = broker.topic(2)
    coords = broker.produce(topic, records(0, 200))
    group = unique("ids")
    app = ledger_app()
    env = app_env(broker.url, topic, group, tmp_path / "replayed")

    tailed = cli(tmp_path, env, "tail", topic, "--partition", "0", "-n", "1000")
    assert tailed.returncode == 0, tailed.stderr.decode()
    shown = printed_ids(tailed.stdout.decode(), topic, 0)
    p0 = sorted((off, i) for i, (p, off) in coords.items() if p == 0)
    assert [id_to_offset(s) for s in shown] == [off for off, _ in p0], "tail shows other IDs"

    first, end = shown[10], shown[30]  # the 11th record, up to (not with) the 31st
    done = replay(tmp_path, {**env, **WIDE}, app, "--topic", topic, "--from-offset", f"0:{first}",
                  "--to-offset", f"0:{end}")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert first in done.stderr.decode() and end in done.stderr.decode(), "the plan shows no IDs"
    assert ids(tmp_path / "replayed") == sorted(i for _, i in p0[10:30])

    run = {**env, "LEDGER": str(tmp_path / "first")}
    code, out = start_worker(tmp_path, app, run, "--until-idle", "2").finish(180)
    assert code == 0, out
    lag = cli(tmp_path, {**env, **WIDE}, "lag", "--group", group, "--topic", topic)
    assert lag.returncode == 0, lag.stderr.decode()
    before = lag_positions(lag.stdout.decode(), topic)
    assert {p: id_to_offset(c) for p, c in before.items()} == broker.ends(coords)

    later = broker.produce(topic, records(200, 230))
    run = {**env, "LEDGER": str(tmp_path / "second")}
    code, out = start_worker(tmp_path, app, run, "--until-idle", "2").finish(180)
    assert code == 0, out
    assert ids(tmp_path / "second") == list(range(200, 230))
    assert broker.uncommitted(topic, group, broker.ends(coords | later)) == {}

    target = ",".join(f"{p}:{c}" for p, c in sorted(before.items()))
    reset = cli(tmp_path, {**env, **WIDE}, "offsets", "reset", "--group", group, "--topic", topic,
                "--to-offset", target)  # fmt: skip
    assert reset.returncode == 0, reset.stderr.decode()
    assert all(c in reset.stdout.decode() for c in before.values()), reset.stdout.decode()
    run = {**env, "LEDGER": str(tmp_path / "third")}
    code, out = start_worker(tmp_path, app, run, "--until-idle", "2").finish(180)
    assert code == 0, out
    assert ids(tmp_path / "third") == list(range(200, 230)), "not rewound to what lag printed"


@pytest.mark.parametrize("broker", ["kafka"], indirect=True)
def test_kafka_refuses_an_entry_id_and_names_the_option(broker, tmp_path: Path) -> None:
    topic = broker.topic(2)
    broker.produce(topic, records(0, 10))
    app = ledger_app()
    env = app.environ(app_env(broker.url, topic, unique("g"), tmp_path / "ledger"))
    entry_id = "1764590000000-3"
    cases = [
        (("replay", app.spec, "--topic", topic, "--from-offset", f"0:{entry_id}"), "--from-offset"),
        (("replay", app.spec, "--topic", topic, "--from-beginning", "--to-offset", entry_id),
         "--to-offset"),
        (("offsets", "reset", "--group", unique("g"), "--topic", topic, "--to-offset", entry_id),
         "--to-offset"),
    ]  # fmt: skip
    for args, option in cases:
        done = cli(tmp_path, env, *args)
        err = done.stderr.decode()
        assert done.returncode == 2, (args, err)
        assert f"{option}: {entry_id} is a Redis entry ID" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ids(tmp_path / "ledger") == []
