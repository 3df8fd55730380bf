"""Fixtures for the core tests that need a filled database (shared with the task tests)."""

from tests.operator_cli import fake_server_process, filled, tsettings

__all__ = ["fake_server_process", "filled", "tsettings"]
