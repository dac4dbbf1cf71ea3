"""The report: medians per side over the rounds, and the streamq / raw ratio.

The ratio is taken per round (each streamq drain against the raw drain next to it), then the
median, so a noisy shared machine moves both sides together.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import asdict
from typing import Any

from .._native import IMPLEMENTATION
from .spec import BenchSpec


def summarize(spec: BenchSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(side: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["side"] == side and r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    summary: dict[str, Any] = {}
    for side in ("raw", "streamq"):
        if any(r["side"] == side for r in runs):
            summary[side] = {
                k: median(side, k)
                for k in ("msg_s", "mb_s", "cpu_s_per_m", "p50_ms", "p99_ms", "rss_start_mb",
                          "rss_peak_mb")
            }  # fmt: skip
            by_role = [r["thread_cpu_s_per_m"] for r in runs
                       if r["side"] == side and r.get("thread_cpu_s_per_m")]  # fmt: skip
            if by_role:
                roles = sorted({role for r in by_role for role in r})
                summary[side]["thread_cpu_s_per_m"] = {
                    role: round(statistics.median(r.get(role, 0.0) for r in by_role), 2)
                    for role in roles
                }
    if "raw" in summary and summary["raw"]["msg_s"]:
        # per round, then the median: each streamq drain is compared with the raw drain next to it
        ratios = []
        for r in range(1, spec.rounds + 1):
            raw = [x["msg_s"] for x in runs if x["side"] == "raw" and x["round"] == r]
            ours = [x["msg_s"] for x in runs if x["side"] == "streamq" and x["round"] == r]
            if raw and ours and raw[0]:
                ratios.append(ours[0] / raw[0])
        summary["ratio"] = round(statistics.median(ratios), 3) if ratios else None
        summary["round_ratios"] = [round(x, 3) for x in ratios]  # the spread behind the median
    params = asdict(spec)
    for k in ("shm", "group", "extra", "latency_topic", "output_topic"):
        params.pop(k)
    return {
        "spec": params,
        "implementation": IMPLEMENTATION,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "summary": summary,
        "runs": runs,
    }
