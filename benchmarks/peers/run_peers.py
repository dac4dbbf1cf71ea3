"""Peer frameworks on the same pre-filled Kafka topic as the raw loop and streamq, one run.

    python benchmarks/peers/run_peers.py --bootstrap HOST:PORT --messages N \
        --peers-python .venv-peers/bin/python [--json FILE]

``streamq bench`` fills the topic and drains it raw and with streamq; then every peer in
``peer_drain.py`` drains the same records in a fresh group, in the peers' own virtualenv.
A peer that is not installed or fails is reported with its error, never left out silently.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from streamq.bench import BenchSpec, run_bench

PEERS = ("quix", "arroyo", "faststream", "faust")
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--peers-python", required=True)
    parser.add_argument("--json")
    a = parser.parse_args()
    python = os.path.abspath(a.peers_python)  # not resolved: the venv's symlink is the venv
    spec = BenchSpec(broker=f"kafka://{a.bootstrap}", messages=a.messages, rounds=1,
                     latency_messages=0)  # fmt: skip
    print(f"raw and streamq: {a.messages:,} records, json handler", flush=True)
    bench = run_bench(spec)
    topic = bench["spec"]["topic"]
    out: dict[str, Any] = {
        "spec": bench["spec"],
        "implementation": bench["implementation"],
        "summary": bench["summary"],
        "raw": bench["summary"]["raw"],
        "streamq": bench["summary"]["streamq"],
        "peers": {},
        "command": "python benchmarks/peers/run_peers.py --messages " + str(a.messages),
        "what": "the same drain on peer frameworks (each in a fresh group)",
    }
    for peer in PEERS:
        cmd = [python, str(HERE / "peer_drain.py"), "--framework", peer, "--bootstrap",
               a.bootstrap, "--topic", topic, "--messages", str(a.messages), "--group",
               f"peer-{peer}-{uuid.uuid4().hex[:6]}"]  # fmt: skip
        try:
            with tempfile.TemporaryDirectory() as cwd:  # Faust writes a data directory
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                      check=False, cwd=cwd)  # fmt: skip
            # some frameworks' loggers prefix our line; the result starts at its brace
            lines = [x[x.index('{"framework"'):] for x in (proc.stdout + proc.stderr).splitlines()
                     if '{"framework"' in x]  # fmt: skip
            if proc.returncode == 0 and lines:
                out["peers"][peer] = json.loads(lines[-1])
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                out["peers"][peer] = {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
        except subprocess.TimeoutExpired:
            out["peers"][peer] = {"error": "did not drain the topic within 300 s"}
        except OSError as exc:
            out["peers"][peer] = {"error": f"cannot start {python}: {exc}"}
        print(f"{peer}: {out['peers'][peer]}", flush=True)
        out["summary"][peer] = out["peers"][peer] if "msg_s" in out["peers"][peer] else None
    out["summary"] = {k: v for k, v in out["summary"].items() if v is not None}
    print(json.dumps({k: out[k] for k in ("raw", "streamq", "peers")}, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
