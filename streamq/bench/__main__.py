"""``python -m streamq.bench``: the entry points of the drain subprocesses ``streamq bench`` starts.

``--drain SIDE SPEC`` runs one side's drain and prints its result as one JSON line;
``--raw-member SLOT SPEC`` is one extra raw consumer of ``--workers N``, stopped by SIGTERM;
``--produce-latency SPEC`` sends a drain's latency records.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from .drain import drain
from .raw import raw_drain
from .spec import BenchSpec
from .workloads import produce_latency


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--drain"]:
        spec = BenchSpec(**json.loads(argv[2]))
        result = drain(spec, argv[1])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return 0
    if argv[:1] == ["--raw-member"]:
        spec = BenchSpec(**json.loads(argv[2]))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        raw_drain(spec, int(argv[1]), stop)
        return 0
    if argv[:1] == ["--produce-latency"]:
        produce_latency(BenchSpec(**json.loads(argv[1])))
        return 0
    sys.stderr.write("use `streamq bench`; this entry point is for its drains\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
