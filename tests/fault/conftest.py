"""Fault scenarios use the ``broker`` fixture from tests/conftest.py (both brokers)."""
