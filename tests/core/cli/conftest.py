"""The operator CLI tests: logging and the umask are restored after each test."""

from tests.operator_cli import restore_logging

__all__ = ["restore_logging"]
