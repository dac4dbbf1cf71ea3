"""Where a streamq drain spends its CPU, thread by thread (the performance issue's profile).

    python benchmarks/threads.py --broker kafka://HOST:PORT [--messages N] [--rounds R]
        [--max-poll-records N]

``streamq bench`` reports CPU per record for the whole process; this splits it. It fills a
topic of ``--messages`` JSON records (100 B, 4 partitions) once, then drains it ``--rounds``
times with a fresh group each, with the json handler of ``streamq bench`` (orjson decode and
a running sum), and prints the CPU each thread used per record from the first handler call to
the last (``/proc/self/task``): the event loop (``MainThread``, where inline handlers run),
the poll thread, librdkafka's or redis-py's own threads.

On 2026-12-03, 1,000,000 records on Apache Kafka, this machine: event loop 0.9-1.8 us, poll
thread 0.7-1.8 us, librdkafka 0.3-0.4 us per record, the two Python threads close to even
(loop 50-60%). The same drain's total moved between 1.9 and 3.9 us from one run to the next
on a quiet machine (the raw loop of ``streamq bench``: 1.3-2.1 us), so compare figures of one
run only. The two Python threads share one GIL: their sum, not the larger, bounds the rate.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from typing import Any

import orjson

import streamq
from streamq.bench.monitor import _proc_cpu
from streamq.bench.spec import BenchSpec
from streamq.bench.workloads import fill
from streamq.errors import BrokerError, ConfigError


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, by thread name (or the kernel's)."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:  # ended meanwhile
            continue
        # /proc/TID/stat is the thread's own, as /proc/PID/stat is the process's
        out[f"{tid}:{names.get(tid, comm)}"] = _proc_cpu(int(tid))
    return out


def drain(broker: str, topic: str, n: int, poll_records: int) -> dict[str, Any]:
    app = streamq.App(
        f"threads-{uuid.uuid4().hex[:8]}",
        broker=broker,
        max_poll_records=poll_records,
        poll_timeout=0.1,
    )
    state: dict[str, Any] = {"n": 0, "sum": 0}

    @app.handler(topic, dlq=False)
    def handle(msg: streamq.Message) -> None:
        s = state
        if s["n"] == 0:
            s["t0"], s["cpu0"] = time.perf_counter(), thread_cpu()
        s["sum"] += orjson.loads(msg.value)["id"]
        s["n"] += 1
        if s["n"] == n:
            s["t1"], s["cpu1"] = time.perf_counter(), thread_cpu()

    app.run(until_idle=1.0)
    if state["n"] < n:
        raise SystemExit(f"handled {state['n']} of {n} records")
    # a thread that started after the first record (none should) counts from zero
    used: dict[str, float] = {}
    for key, cpu in state["cpu1"].items():
        name = key.split(":", 1)[1]
        name = "poll thread" if name.startswith("streamq-poll") else name
        used[name] = used.get(name, 0.0) + cpu - state["cpu0"].get(key, 0.0)
    return {"rate": n / (state["t1"] - state["t0"]), "used": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="kafka://HOST:PORT or redis://...")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    # what `streamq bench` gives both of its sides
    parser.add_argument("--max-poll-records", type=int, default=2000)
    args = parser.parse_args()
    spec = BenchSpec(
        broker=args.broker, messages=args.messages, topic=f"threads-{uuid.uuid4().hex[:8]}"
    )
    try:
        spec.validate()
        fill(spec)
    except (ConfigError, BrokerError) as exc:
        raise SystemExit(f"threads.py: {exc}") from None
    for r in range(args.rounds):
        result = drain(args.broker, spec.topic, args.messages, args.max_poll_records)
        used = sorted(result["used"].items(), key=lambda kv: -kv[1])
        per = ", ".join(f"{name} {cpu / args.messages * 1e6:.2f}" for name, cpu in used if cpu > 0)
        total = sum(cpu for _, cpu in used) / args.messages * 1e6
        print(f"round {r + 1}: {result['rate']:,.0f} records/s; CPU us per record: {per} "
              f"(total {total:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
