"""Drain a pre-filled Kafka topic with a peer framework, decoding each JSON payload.

    <peers-python> benchmarks/peers/peer_drain.py --framework quix --bootstrap HOST:PORT \
        --topic T --messages N --group G

Runs in the peers' own virtualenv (they pin their own client versions), so it imports
nothing from streamq. Timing matches ``streamq bench``: from the first record handled to the
N-th, with CPU time over the same window; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import orjson


class Count:
    """Counts handled records; at the N-th it prints the result and ends the process.

    Ending with ``os._exit`` sidesteps each framework's own shutdown, which is not measured
    and differs (some wait for a rebalance, some for a signal).
    """

    def __init__(self, n: int, framework: str) -> None:
        self.n, self.framework, self.count = n, framework, 0
        self.first = self.cpu0 = 0.0

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first, self.cpu0 = time.perf_counter(), time.process_time()
        if self.count == self.n:
            elapsed = time.perf_counter() - self.first
            cpu = time.process_time() - self.cpu0
            result = {"framework": self.framework, "handled": self.count,
                      "msg_s": round(self.count / elapsed),
                      "cpu_s_per_m": round(cpu / self.count * 1e6, 2)}  # fmt: skip
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
            os._exit(0)


def quix(a: argparse.Namespace) -> Count:
    from quixstreams import Application

    app = Application(broker_address=a.bootstrap, consumer_group=a.group,
                      auto_offset_reset="earliest", loglevel="WARNING")  # fmt: skip
    topic = app.topic(a.topic, value_deserializer="json")
    count = Count(a.messages, "quix")
    sdf = app.dataframe(topic)
    sdf = sdf.update(lambda value: count.tick())
    app.run()
    return count


def arroyo(a: argparse.Namespace) -> Count:
    from arroyo.backends.kafka import KafkaConsumer
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import CommitOffsets, RunTask
    from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
    from arroyo.types import Topic

    consumer = KafkaConsumer(build_kafka_consumer_configuration(
        default_config={}, bootstrap_servers=[a.bootstrap], auto_offset_reset="earliest",
        group_id=a.group,
    ))  # fmt: skip
    count = Count(a.messages, "arroyo")

    def handle(message: Any) -> Any:
        orjson.loads(message.payload.value)
        count.tick()
        return message.payload

    class Factory(ProcessingStrategyFactory):  # type: ignore[type-arg]
        def create_with_partitions(self, commit: Any, partitions: Any) -> Any:
            return RunTask(handle, CommitOffsets(commit))

    StreamProcessor(consumer, Topic(a.topic), Factory()).run()
    return count


def faststream(a: argparse.Namespace) -> Count:
    from faststream import FastStream
    from faststream.confluent import KafkaBroker

    broker = KafkaBroker(a.bootstrap)
    app = FastStream(broker)
    count = Count(a.messages, "faststream")

    @broker.subscriber(a.topic, group_id=a.group, auto_offset_reset="earliest")
    async def handle(body: dict) -> None:  # type: ignore[type-arg]
        count.tick()

    asyncio.run(app.run())
    return count


def faust_(a: argparse.Namespace) -> Count:
    import faust

    app = faust.App(a.group, broker=f"kafka://{a.bootstrap}", value_serializer="json",
                    topic_disable_leader=True, web_enabled=False)  # fmt: skip
    topic = app.topic(a.topic)
    count = Count(a.messages, "faust")

    @app.agent(topic)
    async def handle(stream: Any) -> None:
        async for _ in stream:
            count.tick()

    app.conf.consumer_auto_offset_reset = "earliest"
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
    return count


FRAMEWORKS = {"quix": quix, "arroyo": arroyo, "faststream": faststream, "faust": faust_}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--group", required=True)
    a = parser.parse_args()
    FRAMEWORKS[a.framework](a)
    sys.exit("the framework returned before the topic was drained")


if __name__ == "__main__":
    main()
