"""Recovery after a crash (issue 15): how fast a restarted group drains what a dead one left.

    python benchmarks/recovery.py --kafka kafka://HOST:PORT --redis redis://HOST:PORT \
        [--messages N] [--json FILE]

For each broker, with and without a Redis dedup store (which turns the crash counter on for
Kafka; on Redis Streams it is always on), the same backlog of ``--messages`` JSON records on
4 partitions is drained by ``streamq run --workers W`` (``--workers``, default 1: with two, the
first member to join handles everything until the second arrives, and that rebalance, not the
recovery, decides the reference rate):

1. *reference*: a fresh group drains it without faults;
2. *crash*: another fresh group starts on it and, once 30% is handled, every process of the
   run (the supervisor and its workers) is SIGKILLed: their read-ahead is full, so the dead
   owners leave tens of thousands of polled records behind;
3. *restart*: ``streamq run --workers W --until-idle 2`` on that group drains the rest.

Each case runs ``--rounds`` times (default 3) and reports the round with the median ratio.
The figure is the restart's rate over what was left (records not handled before the kill,
divided by the time from the restart's first handler call to its last) as a ratio to the
reference rate, measured the same way; the target is at least 0.8. Handler calls are counted
by the handler itself into one small file per process, so the count at the kill is known to
within 256 records per worker (the files are flushed every 256 calls and every 50 ms). The
group's join (the dead members' sessions expire first on Kafka) is not part of either rate.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

APP = """
import os, threading, time
import streamq

OUT = os.environ["RECOVERY_OUT"]
_n, _first, _last = 0, 0.0, 0.0
_lock = threading.Lock()
_fd = -1


def _flush() -> None:
    # one fixed-width pwrite: a SIGKILL leaves the previous record or this one, never half
    global _fd
    with _lock:
        if _n:
            if _fd < 0:
                _fd = os.open(os.path.join(OUT, str(os.getpid())), os.O_WRONLY | os.O_CREAT)
            os.pwrite(_fd, f"{_n} {_first} {_last}".ljust(80).encode(), 0)


def _flusher() -> None:
    while True:
        time.sleep(0.05)
        _flush()


threading.Thread(target=_flusher, daemon=True).start()

app = streamq.App(
    os.environ["GROUP"],
    broker=os.environ["BROKER"],
    kafka={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
)


@app.handler(os.environ["TOPIC"], dedup=os.environ.get("DEDUP") or None)
def handle(value: dict, msg: streamq.Message) -> None:
    global _n, _first, _last
    now = time.time()
    if not _n:
        _first = now
    _n += 1
    _last = now
    if not _n & 255:
        _flush()
"""


def _producer_fill(url: str, topic: str, messages: int) -> None:
    import orjson

    import streamq
    from streamq.brokers import connect

    connect(url).admin().create_topic(topic, 4)
    with streamq.Producer(url) as producer:
        for i in range(messages):
            producer.send(topic, orjson.dumps({"i": i, "k": f"k{i % 64}", "pad": "x" * 60}),
                          key=f"k{i % 64}")  # fmt: skip
            if i % 10_000 == 9_999:
                producer.flush(60)
        if producer.flush(120):
            raise RuntimeError("the fill did not finish")


def _counts(out: Path) -> list[tuple[int, float, float]]:
    found = []
    for f in out.iterdir():
        text = f.read_text().split()
        if len(text) == 3:
            found.append((int(text[0]), float(text[1]), float(text[2])))
    return found


def _run(where: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    workers = env["RECOVERY_WORKERS"]
    cmd = [sys.executable, "-m", "streamq", "run", "recovery_app:app", "--workers", workers, *extra]
    return subprocess.Popen(cmd, cwd=where, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(where / "log", "ab"), start_new_session=True)  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill_all(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the workers, then the supervisor, so nothing stops gracefully; returns how
    many workers there were."""
    children = _children(proc.pid)  # the workers and multiprocessing's resource tracker
    workers = sum(b"spawn_main" in _cmdline(pid) for pid in children)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    for pid in children:
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.01)
    return workers


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return "X"


def _rate(found: list[tuple[int, float, float]], records: int) -> tuple[float, float]:
    first = min(f for _, f, _ in found)
    last = max(x for _, _, x in found)
    return records / (last - first), last - first


def case(url: str, dedup: str | None, messages: int, workers: int, where: Path) -> dict[str, Any]:
    topic = f"recovery-{uuid.uuid4().hex[:8]}"
    _producer_fill(url, topic, messages)
    base = {**os.environ, "BROKER": url, "TOPIC": topic, "DEDUP": dedup or "",
            "PYTHONPATH": f"{where}{os.pathsep}{ROOT}",
            "RECOVERY_WORKERS": str(workers)}  # fmt: skip

    def env_for(group: str, phase: str) -> dict[str, str]:
        out = where / f"{group}-{phase}"
        out.mkdir()
        return {**base, "GROUP": group, "RECOVERY_OUT": str(out)}

    # 1. reference
    ref_env = env_for(f"ref-{topic}", "run")
    code = _run(where, ref_env, "--until-idle", "2").wait(600)
    assert code == 0, f"the reference run exited with {code}: see {where / 'log'}"
    ref_found = _counts(Path(ref_env["RECOVERY_OUT"]))
    assert sum(n for n, _, _ in ref_found) >= messages, "the reference did not handle everything"
    ref_rate, ref_s = _rate(ref_found, messages)

    # 2. crash at 30%
    group = f"crash-{topic}"
    crash_env = env_for(group, "crash")
    crash_out = Path(crash_env["RECOVERY_OUT"])
    proc = _run(where, crash_env)
    deadline = time.monotonic() + 300
    while sum(n for n, _, _ in _counts(crash_out)) < 0.3 * messages:
        assert proc.poll() is None, f"the run to crash exited early: see {where / 'log'}"
        assert time.monotonic() < deadline, "30% was never handled"
        time.sleep(0.02)
    killed = _kill_all(proc)
    # --workers 1 runs in the CLI's own process: no supervisor, no children
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    assert killed == (workers if workers > 1 else 0), f"{killed} workers killed"
    handled_before = sum(n for n, _, _ in _counts(crash_out))
    left = messages - handled_before

    # 3. restart
    restart_env = env_for(group, "restart")
    started = time.monotonic()
    code = _run(where, restart_env, "--until-idle", "2").wait(900)
    wall = time.monotonic() - started
    assert code == 0, f"the restart exited with {code}: see {where / 'log'}"
    restart_found = _counts(Path(restart_env["RECOVERY_OUT"]))
    rate, restart_s = _rate(restart_found, left)
    return {
        "messages": messages,
        "workers": workers,
        "reference_msg_s": round(ref_rate),
        "reference_s": round(ref_s, 3),
        "handled_before_kill": handled_before,
        "left": left,
        "restart_handler_calls": sum(n for n, _, _ in restart_found),
        "restart_msg_s": round(rate),
        "restart_s": round(restart_s, 3),
        "restart_wall_s": round(wall, 1),
        "ratio": round(rate / ref_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kafka", help="kafka://host:port (omit to skip Kafka)")
    parser.add_argument("--redis", required=True, help="redis://host:port (broker and dedup)")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="the median ratio is reported")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"cases": {}}
    brokers = [("kafka", args.kafka)] if args.kafka else []
    brokers.append(("redis", args.redis))
    for name, url in brokers:
        for dedup in (None, args.redis):
            label = f"{name}-{'redis-dedup' if dedup else 'no-dedup'}"
            rounds = []
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="streamq-recovery-") as tmp:
                    where = Path(tmp)
                    (where / "recovery_app.py").write_text(textwrap.dedent(APP))
                    try:
                        r = case(url, dedup, args.messages, args.workers, where)
                    except AssertionError:
                        print((where / "log").read_text()[-5000:], file=sys.stderr)
                        raise
                rounds.append(r)
                print(
                    f"{label}: reference {r['reference_msg_s']:,} msg/s; killed after "
                    f"{r['handled_before_kill']:,}, restart {r['restart_msg_s']:,} msg/s over "
                    f"the {r['left']:,} left ({r['restart_wall_s']} s wall): ratio {r['ratio']}",
                    flush=True,
                )
            # the round with the median ratio stands for the case; every ratio is kept
            rounds.sort(key=lambda r: r["ratio"])
            results["cases"][label] = {
                **rounds[len(rounds) // 2],
                "ratios": [r["ratio"] for r in rounds],
            }
    results["min_ratio"] = min(r["ratio"] for r in results["cases"].values())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
