"""Which per-record core runs: the compiled ``streamq._dispatch`` or the pure-Python twins.

Decided once, at import. ``STREAMQ_NO_EXTENSIONS=1`` forces the twins; a machine where the
extension was not built falls back to them silently (the test suite refuses that fallback
unless asked for it). Modules with a twin (``message``, ``dispatch``, ``offsets``) pick their
implementation from ``native`` at the bottom of their file.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Literal

__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "native"]

NO_EXTENSIONS = bool(os.environ.get("STREAMQ_NO_EXTENSIONS"))

native: ModuleType | None = None
if not NO_EXTENSIONS:
    try:
        native = importlib.import_module("streamq._dispatch")
    except ImportError:  # no compiler at install time: the twins behave identically
        native = None

IMPLEMENTATION: Literal["cython", "python"] = "python" if native is None else "cython"
