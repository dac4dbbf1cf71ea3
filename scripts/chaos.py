"""Seeded chaos against a real broker: random kills, freezes and broker stalls, then the ledger.

Not part of CI (it runs for minutes by design). It starts a private broker (redis-server, or
Apache Kafka from streamq.testing.kafka), N ``streamq run`` workers of the ledger test app,
and a producer writing numbered records (with a little poison) for the whole run. Meanwhile
it picks, from a seeded RNG, one fault at a time:

- ``kill``: SIGKILL a worker, restart it a moment later;
- ``freeze``: SIGSTOP a worker for seconds (a GC pause, a stalled VM), then SIGCONT;
- ``stall``: SIGSTOP the broker itself for seconds, then SIGCONT.

At the end every fault is healed, the workers drain with ``--until-idle``, and the ledger is
checked against RELIABILITY.md's invariants (I1 no loss, I3 per key and per ownership epoch,
I6 outside the injected freezes, I10 consistent coordinates, I5 poison only in the DLQ), and
I2 against the committed positions sampled during the run (``tests/fault/observer.py``).
Every second the workers' RSS, threads and open fds are sampled from /proc; the report gives,
per worker process, the first and last values and the RSS slope after a warm-up (F4, I7).
The first ``--spare`` workers (default 1) are never killed, so one lives the whole run.
The seed is printed first: rerun with ``--seed`` to replay the same schedule.

    python scripts/chaos.py --broker redis --duration 300 --seed 7 --workers 3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

import streamq  # noqa: E402
from streamq.brokers import connect  # noqa: E402
from streamq.testing.kafka import KafkaCluster, KafkaLaunchError  # noqa: E402
from tests.conftest import RedisServer, free_port  # noqa: E402
from tests.fault.invariants import check_run  # noqa: E402
from tests.fault.observer import CommitObserver, check_commits  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    Worker,
    app_env,
    read_ledger,
    unique,
    write_app,
)


def start_broker(kind: str, where: Path) -> tuple[str, subprocess.Popen, RedisServer]:
    """The broker under test and a Redis for the dedup store (the same one for Redis)."""
    dedup = RedisServer(free_port(), where, durable=True)
    dedup.start()
    assert dedup.proc is not None
    if kind == "redis":
        return dedup.url, dedup.proc, dedup
    try:
        kafka = KafkaCluster.start(1)
    except KafkaLaunchError as exc:
        raise SystemExit(f"chaos: {exc}") from None
    assert kafka.nodes[0].proc is not None
    return kafka.url, kafka.nodes[0].proc, dedup


class Producer(threading.Thread):
    """Numbered records at a steady rate; only acknowledged ids count as produced."""

    def __init__(self, url: str, topic: str, rate: float, kind: str) -> None:
        super().__init__(daemon=True)
        self.url, self.topic, self.rate, self.kind = url, topic, rate, kind
        self.stop = threading.Event()
        self.acked: set[int] = set()
        self.poison: set[int] = set()
        self.failed = 0

    def run(self) -> None:
        with streamq.Producer(self.url, broker_timeout=120) as producer:
            i = 0
            while not self.stop.is_set():
                bad = i % 997 == 5
                value = b"\xffnot json" if bad else orjson.dumps({"i": i, "k": f"k{i % 20}"})
                fut = producer.send(self.topic, value, key=f"k{i % 20}")
                fut.add_done_callback(lambda f, i=i, bad=bad: self._done(f, i, bad))
                i += 1
                time.sleep(1 / self.rate)
            producer.flush(120)

    def _done(self, fut, i: int, bad: bool) -> None:
        if fut.exception() is not None:
            self.failed += 1
        elif bad:
            self.poison.add(i)
        else:
            self.acked.add(i)


class Vitals(threading.Thread):
    """RSS (kB), threads and open fds of every worker process, once a second."""

    def __init__(self, workers: list[Worker]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.stop = threading.Event()
        self.samples: dict[int, list[tuple[float, int, int, int]]] = {}

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for w in list(self.workers):
                try:
                    status = Path(f"/proc/{w.pid}/status").read_text()
                    fds = len(os.listdir(f"/proc/{w.pid}/fd"))
                except OSError:
                    continue  # gone: killed, or between a kill and its restart
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields.get("State", "").strip().startswith("Z"):
                    continue
                rss = int(fields["VmRSS"].split()[0])
                threads = int(fields["Threads"])
                self.samples.setdefault(w.pid, []).append((time.monotonic(), rss, threads, fds))

    def report(self, warmup: float = 30.0) -> list[str]:
        lines = []
        for pid, seq in self.samples.items():
            life = seq[-1][0] - seq[0][0]
            after = [s for s in seq if s[0] - seq[0][0] >= warmup]
            slope = _slope([(t, rss) for t, rss, _, _ in after]) * 60 if len(after) > 10 else None
            shown = f"{slope:+.0f} kB/min" if slope is not None else "n/a (short-lived)"
            if life >= 300:  # a long life: the second half alone, past any warm-up
                late = [(t, rss) for t, rss, _, _ in seq if t - seq[0][0] >= life / 2]
                shown += f", second half {_slope(late) * 60:+.0f} kB/min"
            lines.append(
                f"pid {pid}: {life:.0f}s; RSS {seq[0][1] // 1024} -> {seq[-1][1] // 1024} MB "
                f"(max {max(s[1] for s in seq) // 1024}), slope after {warmup:.0f}s {shown}; "
                f"threads {seq[0][2]} -> {seq[-1][2]}; fds {seq[0][3]} -> {seq[-1][3]}"
            )
        return lines


def _slope(points: list[tuple[float, int]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "kafka"], default="redis")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of chaos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0, help="records produced per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-dedup", action="store_true", help="run without the dedup store")
    parser.add_argument("--faults", default="kill,freeze,stall",
                        help="the kinds to draw from, comma-separated; 'none' for a calm soak "
                        "(F4 without faults: a worker's RSS over a long steady run)")  # fmt: skip
    parser.add_argument("--spare", type=int, default=1,
                        help="workers never killed (still frozen and stalled), so at least one "
                        "lives the whole run and its RSS slope means something (F4)")  # fmt: skip
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    print(f"chaos: seed {seed} (rerun with --seed {seed}), broker {args.broker}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="streamq-chaos-"))
    url, broker_proc, dedup = start_broker(args.broker, work)
    topic, group, ledger = unique("chaos"), unique("chaos-g"), work / "ledger"
    connect(url).admin().create_topic(topic, 4)
    spec = write_app(work, extra={"lease_ttl": 3, "max_poll_records": 100})
    env = app_env(url, topic, group, ledger, HANDLER_SLEEP="0.0005",
                  DEDUP="" if args.no_dedup else dedup.url,
                  STREAMQ_CRASH_STORE=dedup.url)  # fmt: skip
    observer = CommitObserver(args.broker, url, topic, group, 4).start()
    workers = [Worker(work, spec, env) for _ in range(args.workers)]
    vitals = Vitals(workers)
    vitals.start()
    producer = Producer(url, topic, args.rate, args.broker)
    producer.start()
    faults: dict[str, int] = {"kill": 0, "freeze": 0, "stall": 0}
    frozen: set[int] = set()  # workers frozen past their lease: zombies, allowed to overlap

    kinds = [k for k in ["kill", "kill", "freeze", "stall"] if k in args.faults.split(",")]
    end = time.monotonic() + args.duration
    try:
        while time.monotonic() < end:
            time.sleep(min(rng.uniform(2, 10), max(0.0, end - time.monotonic())))
            if not kinds:
                continue
            fault = rng.choice(kinds)
            if fault == "kill" and args.spare >= len(workers):
                fault = "freeze"
            faults[fault] += 1
            if fault == "kill":
                slot = rng.randrange(args.spare, len(workers))
                workers[slot].send_signal(signal.SIGKILL)
                workers[slot].finish(30)
                time.sleep(rng.uniform(0, 3))
                workers[slot] = Worker(work, spec, env)
                print(f"chaos: t={args.duration - (end - time.monotonic()):.0f}s kill worker "
                      f"{slot}", flush=True)  # fmt: skip
            else:
                pid = broker_proc.pid if fault == "stall" else rng.choice(workers).pid
                pause = rng.uniform(1, 15 if fault == "freeze" else 20)
                if fault == "freeze":
                    frozen.add(pid)
                os.kill(pid, signal.SIGSTOP)
                time.sleep(pause)
                os.kill(pid, signal.SIGCONT)
                print(f"chaos: {fault} {pid} for {pause:.1f}s", flush=True)
    finally:
        producer.stop.set()
        producer.join(180)
    print(f"chaos: faults {faults}; produced {len(producer.acked)} good, "
          f"{len(producer.poison)} poison, {producer.failed} sends failed", flush=True)  # fmt: skip

    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.finish(120)
    vitals.stop.set()
    drain = [Worker(work, spec, env, "--until-idle", "5") for _ in range(args.workers)]
    codes = [w.finish(600)[0] for w in drain]
    observer.stop()
    entries = read_ledger(ledger)
    # A broker stall can end a member's session: it then starts again from its commits.
    dupes = check_run(entries, produced=producer.acked, poison=producer.poison,
                      starts=read_ledger(ledger, "S"), rewinds_within_a_member=True,
                      overlap_ok=frozen)  # fmt: skip
    checked = check_commits(observer.samples, entries)
    for line in vitals.report():
        print(f"chaos: {line}")
    print(f"chaos: drain exit codes {codes}; {len({e.id for e in entries})} handled, "
          f"{len(dupes)} duplicates; I2 held over {len(observer.samples)} samples "
          f"({checked} record checks); invariants I1 I3 I5 I6 I10 hold; seed {seed}")  # fmt: skip
    if args.broker == "kafka":
        broker_proc.kill()
    dedup.kill()
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
