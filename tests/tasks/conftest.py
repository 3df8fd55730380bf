"""Fixtures for the task tests (shared with the CLI and backup tests)."""

from tests.operator_cli import fake_server_process, filled, tsettings

__all__ = ["fake_server_process", "filled", "tsettings"]
