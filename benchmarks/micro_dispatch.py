"""Per-record cost of the dispatch core: the compiled module against its pure-Python twin.

    python benchmarks/micro_dispatch.py [--json FILE]

One thread, no broker: batches of real confluent-kafka records (built in memory, 4
partitions, 100-byte JSON) go through every per-record step the poll thread and an inline
lane perform: conversion to Message, split by partition and by key lane, offset tracking,
the handler loop (a no-op handler, so the call itself is measured; decoding is orjson in
both cores), dedup keys, and completion (a ``Span`` of each unit, as a partition's lane
reports it, applied to the tracker). Each core runs in its own interpreter
(``STREAMQ_NO_EXTENSIONS=1`` for the twin) and reports nanoseconds per record per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

BATCH = 2000
PARTITIONS = 4
ROUNDS = 200


def measure() -> dict[str, Any]:
    import confluent_kafka as ck
    import orjson

    from streamq import dispatch
    from streamq.brokers import kafka  # binds the compiled core to confluent-kafka's records
    from streamq.dispatch import (
        SHAPE_MESSAGE,
        SHAPE_PAYLOAD_MSG,
        Dispatcher,
        call_each,
        coordinate_keys,
        json_decoder,
        kafka_messages,
        make_invoker,
    )
    from streamq.offsets import OffsetTracker, span_of

    value = orjson.dumps({"id": 1, "customer": "customer-0001", "amount": 12.5, "pad": "x" * 40})
    raw = [
        ck.Message(topic="orders", partition=i % PARTITIONS, offset=10**9 + i // PARTITIONS,
                   key=b"k%d" % (i % 1000), value=value, timestamp=(1, 1_700_000_000_000))
        for i in range(BATCH)
    ]  # fmt: skip
    raw.sort(key=lambda m: m.partition())  # brokers return runs of one partition
    dispatcher = Dispatcher()

    def noop(m: Any) -> None:
        return None

    def noop2(payload: Any, m: Any) -> None:
        return None

    invoke = make_invoker(noop, None, SHAPE_MESSAGE)
    decode_invoke = make_invoker(noop2, json_decoder(dict, str), SHAPE_PAYLOAD_MSG)
    steps: dict[str, float] = dict.fromkeys(
        ("convert", "split", "split_keys", "track", "call", "dedup_keys", "complete"), 1e18
    )
    decode_call = 1e18
    clock = time.perf_counter_ns
    errors: list[Any] = []
    for _ in range(ROUNDS):
        tracker = OffsetTracker()
        t0 = clock()
        msgs = kafka_messages(raw, errors.append)
        t1 = clock()
        parts = dispatcher.split(msgs)
        t2 = clock()
        for unit in parts.values():
            dispatcher.split_keys(unit, 16)
        t3 = clock()
        epochs = {tp: tracker.assign(tp) for tp in parts}
        t3b = clock()
        for tp, unit in parts.items():
            tracker.track(tp, unit)
        t4 = clock()
        failed: list[BaseException] = []
        for unit in parts.values():
            call_each(invoke, unit, 0, len(unit), failed)
        t5 = clock()
        for unit in parts.values():
            coordinate_keys(unit)
        t6 = clock()
        for tp, unit in parts.items():
            tracker.complete(tp, epochs[tp], span_of(unit))
        t7 = clock()
        for unit in parts.values():
            call_each(decode_invoke, unit, 0, len(unit), failed)
        t8 = clock()
        assert not failed and len(msgs) == BATCH
        # the fastest round of each step: what the code costs, not what the machine's
        # neighbours cost at the time
        for name, took in (("convert", t1 - t0), ("split", t2 - t1), ("split_keys", t3 - t2),
                           ("track", t4 - t3b), ("call", t5 - t4), ("dedup_keys", t6 - t5),
                           ("complete", t7 - t6)):  # fmt: skip
            steps[name] = min(steps[name], took)
        decode_call = min(decode_call, t8 - t7)
    per = {k: round(v / BATCH, 1) for k, v in steps.items()}
    return {
        "implementation": dispatch.IMPLEMENTATION,
        "confluent_field_reads": kafka.FIELD_READS,
        "ns_per_record": per,
        "total_ns_per_record": round(sum(per.values()), 1),
        "call_with_json_decode_ns": round(decode_call / BATCH, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="Write the result here.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    results = {}
    for name, env in (("cython", {}), ("python", {"STREAMQ_NO_EXTENSIONS": "1"})):
        out = subprocess.run(
            [sys.executable, __file__, "--child"],
            env=os.environ | env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[name] = json.loads(out.stdout)
    if results["cython"]["implementation"] != "cython":
        sys.exit("the compiled core did not load: build it first (pip install -e .)")
    speedup = results["python"]["total_ns_per_record"] / results["cython"]["total_ns_per_record"]
    results["speedup"] = round(speedup, 2)
    width = max(len(k) for k in results["cython"]["ns_per_record"])
    print(f"{'step':<{width}}  {'cython ns':>10}  {'python ns':>10}  {'x':>6}")
    for step, c in results["cython"]["ns_per_record"].items():
        p = results["python"]["ns_per_record"][step]
        print(f"{step:<{width}}  {c:>10.1f}  {p:>10.1f}  {p / c if c else 0:>6.1f}")
    total_c = results["cython"]["total_ns_per_record"]
    total_p = results["python"]["total_ns_per_record"]
    print(f"{'total':<{width}}  {total_c:>10.1f}  {total_p:>10.1f}  {speedup:>6.1f}")
    print(f"(call with JSON decode: cython {results['cython']['call_with_json_decode_ns']} ns, "
          f"python {results['python']['call_with_json_decode_ns']} ns)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
