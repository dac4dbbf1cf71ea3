"""streamq's logging: one shared rate limit, a JSON format for machines, record coordinates.

Lines about a record carry ``topic``, ``partition``, ``offset``, ``handler`` and ``attempt``
as ``extra`` fields (``about()``): the human format has them in the text already, and the
JSON format emits them as keys, so a log pipeline can join a line to its DLQ record.

Error storms are limited per call site, not globally: a broker that is down repeats the same
few lines, and each of them is let through ``burst`` times in its first ``window`` seconds;
while the storm goes on, each later window lets one line through, which says how many were
dropped. A site that stays quiet for a whole window gets its full burst back. Lines about a
record are never dropped: each record that fails is logged exactly once per attempt (the
reliability contract's I9), and their rate is bounded by the records themselves, with
retries spaced by backoff.

Nothing here runs per record on the hot path: handlers that succeed log nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from .credentials import Scrub

__all__ = [
    "JsonFormatter",
    "RateLimit",
    "about",
    "configure",
    "format_of",
    "get_logger",
    "partitions_text",
]

# The extra fields that make a line about a record (and the group it belongs to).
RECORD_FIELDS = ("group", "topic", "partition", "offset", "handler", "attempt")


class RateLimit(logging.Filter):
    """``burst`` lines per call site, then one per ``window`` while it repeats; records pass.

    A burst every window would let an outage print ``burst`` lines per site every ten
    seconds for as long as it lasts; the first burst shows what broke, and after that a
    count per window is all a reader needs.
    """

    def __init__(self, burst: int = 5, window: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        # (logger, level, format string) -> [window start, lines in window, dropped, allowed]
        self._sites: dict[tuple[str, int, str], list[Any]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "offset"):
            return True  # about one record: I9 wants exactly one line each
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            site = self._sites.get(key)
            if site is None:
                if len(self._sites) > 10_000:  # format strings are finite; be safe anyway
                    self._sites.clear()
                site = self._sites[key] = [now, 0, 0, self.burst]
            if now - site[0] >= self.window:
                # Lines dropped in the window just ended mean the storm goes on: one line
                # per window from now. A window with none dropped, or a whole window
                # without a line, means it is over, and the next one gets its burst.
                storming = site[2] and now - site[0] < 2 * self.window
                site[3] = 1 if storming else self.burst
                if site[2]:
                    record.msg = f"{record.msg} ({site[2]} similar lines suppressed)"
                site[0], site[1], site[2] = now, 0, 0
            site[1] += 1
            if site[1] > site[3]:
                site[2] += 1
                return False
            return True


_RATE_LIMIT = RateLimit()
_SCRUB = Scrub()


def get_logger(name: str) -> logging.Logger:
    """A streamq logger with the shared rate limit and secret masking, also when embedded.

    Both sit on the logger, not on a handler, so they apply whichever handlers the
    application configured; the mask runs after the limit, on the lines that pass.
    """
    logger = logging.getLogger(name)
    if _RATE_LIMIT not in logger.filters:
        logger.addFilter(_RATE_LIMIT)
        logger.addFilter(_SCRUB)
    return logger


def partitions_text(tps: Iterable[Any]) -> str:
    """``orders[0], orders[3]``: partitions as log lines name them, sorted."""
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "nothing"


def about(handler: str, msg: Any, group: str | None = None) -> dict[str, Any]:
    """``extra=`` for a line about one record: its coordinates, handler and attempt."""
    fields = {
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "handler": handler,
        "attempt": msg.attempt,
    }
    if group is not None:
        fields["group"] = group
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, worker, record coordinates."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.worker is not None:
            out["worker"] = self.worker
        for name in RECORD_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error_type"] = type(exc).__name__
            # exc_text is the traceback Scrub already masked
            out["traceback"] = record.exc_text or "".join(traceback.format_exception(exc))
        return orjson.dumps(out, default=str).decode()


def configure(level: str | int = "INFO", fmt: str = "text", worker: int | None = None) -> None:
    """Set up the root logger for the CLI or a spawned worker (replacing earlier handlers)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SCRUB)  # client libraries' lines too
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        where = f" [worker {worker}]" if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def format_of(logger: logging.Logger) -> str:
    """How ``configure`` set this logger up ("json" or "text"), for processes it spawns."""
    json = any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)
    return "json" if json else "text"
