"""The CLI: one clear line and a documented exit code for every user error, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]


def streamq(*args: str, cwd: Path = ROOT, stdin: bytes | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "streamq", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def assert_clean_error(result, code: int, fragment: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert fragment in err
    assert "Traceback" not in err


def test_version_names_the_dispatch_core() -> None:
    result = streamq("--version")
    assert result.returncode == 0
    assert b"dispatch core: " in result.stdout


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nocolon", "is not MODULE:APP"),
        ("no_such_module_xyz:app", "cannot import module 'no_such_module_xyz'"),
        ("examples.billing:nope", "has no attribute 'nope'"),
        ("examples.billing:charged", "is a dict, not a streamq.App"),
    ],
)
def test_bad_app_spec(spec: str, fragment: str) -> None:
    assert_clean_error(streamq("run", spec, "--until-idle", "0"), 2, fragment)


def test_unknown_scheme_and_malformed_url() -> None:
    result = streamq("run", "examples.billing:app", "--broker", "amqp://x", "--until-idle", "0")
    assert_clean_error(result, 2, "unknown URL scheme 'amqp'")
    assert_clean_error(streamq("topics", "list", "--broker", "nonsense"), 2, "not a broker URL")


def test_bad_numbers_are_usage_errors() -> None:
    result = streamq("run", "examples.billing:app", "--workers", "0")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert b"--workers" in result.stderr


def test_import_error_inside_the_module_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import streamq\nraise RuntimeError('bad config')\n")
    assert_clean_error(
        streamq("run", "broken_app:app", cwd=tmp_path), 2, "RuntimeError: bad config"
    )


def test_handler_config_errors_surface_at_import(tmp_path: Path) -> None:
    (tmp_path / "bad_handler.py").write_text(
        textwrap.dedent(
            """
            import streamq
            app = streamq.App("x")

            @app.handler("t", ordering="random")
            def h(x): ...
            """
        )
    )
    result = streamq("run", "bad_handler:app", cwd=tmp_path)
    assert_clean_error(result, 2, "ordering: 'random' is not one of")
    assert b"parameter 'x' has no annotation" in result.stderr  # every problem at once


def test_produce_reads_jsonl_and_reports_bad_lines() -> None:
    ok = streamq("produce", "orders", "--broker", "memory://cli", "--key-field", "c",
                 stdin=b'{"c": "a", "n": 1}\n\n{"c": 2}\n')  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert b"sent 2 records to orders" in ok.stderr
    assert b"memory:// lives only inside this process" in ok.stderr
    bad = streamq("produce", "orders", "--broker", "memory://cli", stdin=b'{"a": 1}\n{oops\n')
    assert_clean_error(bad, 2, "<stdin>:2: not valid JSON")
    assert b"1 records were sent before it" in bad.stderr
    nokey = streamq("produce", "orders", "--key-field", "id", stdin=b'{"a": 1}\n')
    assert_clean_error(nokey, 2, "no field 'id'")


def test_topics_create_and_list() -> None:
    result = streamq("topics", "create", "orders", "--partitions", "3", "--broker", "memory://t")
    assert result.returncode == 0 and b"created orders with 3 partitions" in result.stdout
    assert streamq("topics", "list", "--broker", "memory://t").stdout == b""  # new process


def test_run_until_idle_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "small_app.py").write_text(
        textwrap.dedent(
            """
            import streamq
            app = streamq.App("small", broker="memory://small", poll_timeout=0.02)
            seen = []

            @app.handler("events")
            def h(value: dict) -> None:
                seen.append(value["n"])

            with streamq.Producer("memory://small") as p:
                for n in range(100):
                    p.send("events", {"n": n}, key=str(n % 7))
                p.send("events", b"garbage")
            """
        )
    )
    result = streamq("run", "small_app:app", "--until-idle", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"handled 100, dead-lettered 1" in result.stderr


def test_sigterm_stops_gracefully_with_exit_0(tmp_path: Path) -> None:
    (tmp_path / "forever_app.py").write_text(
        textwrap.dedent(
            """
            import streamq, sys
            app = streamq.App("forever", broker="memory://forever", poll_timeout=0.02)

            @app.handler("events")
            def h(value: dict) -> None:
                print("handled", value["n"], flush=True)

            streamq.Producer("memory://forever").send("events", {"n": 1})
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamq", "run", "forever_app:app"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"handled 1\n"  # it is running
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"stopping gracefully" in err and b"Traceback" not in err


def test_metrics_and_log_options_refuse_bad_values() -> None:
    import socket

    assert_clean_error(streamq("run", "x:app", "--metrics-port", "70000"), 2, "--metrics-port")
    assert_clean_error(streamq("--log-format", "yaml", "run", "x:app"), 2, "--log-format")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = streamq("run", "x:app", "--metrics-port", port)  # checked before the app
    assert_clean_error(result, 2, f"--metrics-port {port}: cannot listen on 127.0.0.1")


def _commands() -> dict[str, click.Command]:
    """Every leaf command by its full name (``dlq show``), walked from the root group."""
    from streamq.cli import cli

    out: dict[str, click.Command] = {}

    ctx = click.Context(cli)

    def walk(prefix: str, command: click.Command) -> None:
        if isinstance(command, click.Group):  # the root's commands are imported on first use
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(f"{prefix} {name}".strip(), sub)
        else:
            out[prefix] = command

    walk("", cli)
    return out


def _options(opt: str) -> dict[str, click.Parameter]:
    return {name: p for name, c in _commands().items() for p in c.params if opt in p.opts}


def test_shared_options_are_one_declaration_with_one_help() -> None:
    brokers = _options("--broker")
    del brokers["bench"]  # the broker to measure, memory://bench by default: another option
    assert len(brokers) == 16  # schedules list, pause, resume, trigger among them
    assert {(p.help, p.required) for p in brokers.values()} == {
        ("Broker URL; beats STREAMQ_BROKER and any broker the app sets.", False)
    }
    for opt in ("--partition", "--rate"):
        found = _options(opt)
        assert len(found) == 2 and len({(p.help, repr(p.type)) for p in found.values()}) == 1
    assert {name for name, p in _options("--group").items() if p.required} == {
        "lag",
        "offsets reset",
    }


def test_every_typed_offset_says_what_each_broker_takes() -> None:
    typed = {(name, opt) for opt in ("--from-offset", "--to-offset") for name in _options(opt)}
    assert typed == {("replay", "--from-offset"), ("replay", "--to-offset"),
                     ("offsets reset", "--to-offset")}  # fmt: skip
    for opt in ("--from-offset", "--to-offset"):
        for p in _options(opt).values():
            assert p.help is not None
            assert "Kafka offset" in p.help and "Redis entry ID MS-SEQ" in p.help, p.help


@pytest.mark.parametrize("command", ["replay", "offsets reset", "tail", "lag", "dlq show"])
def test_help_reads_in_one_piece(command: str) -> None:
    result = streamq(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert b"--broker TEXT" in result.stdout and b"beats STREAMQ_BROKER" in result.stdout


def test_topics_list_with_an_app_shows_the_pipeline_stages() -> None:
    result = streamq("topics", "list", "--app", "examples.pipeline:app", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr.decode()
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in result.stdout.decode().splitlines()
        if line.startswith("│")
    }
    assert rows["orders"][1:] == ["billing-pipeline/invoice", "-"]
    assert rows["invoices"][1:] == ["mailer/email", "billing-pipeline/invoice"]
    assert rows["emails"][1:] == ["-", "mailer/email"]
    assert rows["orders.dlq"][1:] == ["-", "billing-pipeline/invoice"]
    assert_clean_error(streamq("topics", "list", "--app", "examples.nope:app"), 2, "nope")


def test_a_worker_imports_only_the_run_command() -> None:
    """``streamq run`` starts every worker: the operator commands' modules (rich's tables and
    progress bars, the bench harness) stay unimported until one of them is used."""
    probe = (
        "import sys; from streamq.cli import cli; import click; "
        "cli.get_command(click.Context(cli), 'run'); "
        "print(sorted(m for m in sys.modules if m.startswith(('rich', 'streamq.cli.'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['streamq.cli.common', 'streamq.cli.run']", out.stdout
