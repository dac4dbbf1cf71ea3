"""Test apps: the real modules a test's ``streamq run`` worker imports, one scenario each.

A test never writes code to disk: it picks a module here by its spec (``tests.apps.ledger:app``,
through ``tests.integration.helpers.ledger_app`` or ``app_spec``) and hands it its settings in
the worker's environment. Each worker is a subprocess with an environment of its own, so two
workers of one test may run the same module with different settings side by side.

- Plain strings are read straight from ``os.environ``: ``BROKER``, ``TOPIC``, ``GROUP``,
  ``LEDGER`` (from ``helpers.app_env``) and per-run knobs such as ``HANDLER_SLEEP``,
  ``KILL_ID`` or ``DEDUP``.
- Structured settings (a ``kafka`` config dict, extra ``App`` keyword arguments, a victim id,
  a retry count) travel as JSON in ``APP_<NAME>``: ``settings_env`` writes them on the test's
  side and ``setting`` reads them here.

Every handler that keeps a ledger writes the lines ``helpers.read_ledger``,
``fault/invariants.py`` and ``fault/observer.py`` read: ``KIND PID PARTITION OFFSET KEY ID
MONOTONIC_NS``, each with one ``os.write`` on an O_APPEND fd opened once, so a line that
reached the kernel survives SIGKILL (RELIABILITY.md, "Handler ledger").
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamq import Message


def setting(name: str, default: Any = None) -> Any:
    """The JSON value the test put in ``APP_<NAME>``, or ``default`` when it put none."""
    raw = os.environ.get(f"APP_{name.upper()}")
    return default if raw is None else json.loads(raw)


def settings_env(**values: Any) -> dict[str, str]:
    """The environment variables that hand ``values`` to ``setting`` in a worker."""
    return {f"APP_{name.upper()}": json.dumps(value) for name, value in values.items()}


class Ledger:
    """The handler ledger named by ``LEDGER``, opened once per process (a pool process too)."""

    def __init__(self, variable: str = "LEDGER") -> None:
        self.fd = os.open(os.environ[variable], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, kind: str, *fields: object) -> None:
        """``KIND PID FIELDS...`` as one write, so concurrent writers never interleave."""
        os.write(self.fd, (" ".join(map(str, (kind, os.getpid(), *fields))) + "\n").encode())

    def record(self, kind: str, msg: Message, value: dict, ns: int | None = None) -> None:
        """A line about one record: its coordinates, its key and id, and a monotonic stamp."""
        stamp = ns or time.monotonic_ns()
        self.line(kind, msg.partition, msg.offset, value["k"], value["i"], stamp)
