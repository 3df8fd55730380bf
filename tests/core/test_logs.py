"""Logging: the format and files, rotation settings, secrets never written."""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.logs import (
    ACCESS_LOGGER,
    attach_access_log,
    detach_access_log,
    reopen_logging,
    setup_logging,
)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_files_format_and_rotation(tmp_path: Path, restore_root: None) -> None:
    setup_logging(tmp_path, console=False)
    logging.getLogger("core.app").info("started %s", "ok")
    logging.getLogger("core.telegram").warning("flood wait %d s", 3)
    logging.getLogger("core.telegram.bot").info("refused a stranger")
    logging.getLogger("tasks.queue").info("backup done")
    system = (tmp_path / "system.log").read_text()
    assert " - core.app - INFO - started ok" in system
    assert "flood wait 3 s" in system  # everything also reaches system.log
    telegram = (tmp_path / "telegram.log").read_text()
    assert "flood wait 3 s" in telegram and "refused a stranger" in telegram
    assert "started ok" not in telegram
    assert "backup done" in (tmp_path / "tasks.log").read_text()
    rotating = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.handlers.RotatingFileHandler)
    ]
    assert rotating and rotating[0].maxBytes == 10 * 1024 * 1024 and rotating[0].backupCount == 3


def test_every_telegram_module_logs_to_telegram_log(tmp_path: Path, restore_root: None) -> None:
    import importlib
    import pkgutil

    import core.telegram

    setup_logging(tmp_path, console=False)
    loggers = []
    for info in pkgutil.iter_modules(core.telegram.__path__, "core.telegram."):
        module = importlib.import_module(info.name)
        if isinstance(getattr(module, "log", None), logging.Logger):
            loggers.append(module.log)
    assert len(loggers) >= 5  # gateway, app, bot, channel, ledger
    for logger in loggers:
        assert logger.name.startswith("core.telegram.")
        logger.warning("hello from %s", logger.name)
    telegram = (tmp_path / "telegram.log").read_text()
    for logger in loggers:
        assert f"hello from {logger.name}" in telegram


def test_secrets_are_redacted_everywhere(tmp_path: Path, restore_root: None) -> None:
    setup_logging(tmp_path, secrets=["sk-live-123456", "admintoken"], console=False)
    log = logging.getLogger("core.llm")
    log.warning("calling with key %s", "sk-live-123456")
    try:
        raise RuntimeError("auth failed for Bearer admintoken")
    except RuntimeError:
        log.exception("request failed")
    logging.getLogger("core.telegram").info("token admintoken in telegram")
    for name in ("system.log", "telegram.log"):
        text = (tmp_path / name).read_text()
        assert "sk-live-123456" not in text
        assert "admintoken" not in text
    assert "calling with key ***" in (tmp_path / "system.log").read_text()


def test_json_lines(tmp_path: Path, restore_root: None) -> None:
    setup_logging(tmp_path, json_lines=True, console=False)
    logging.getLogger("core.memory").info("stored %d messages", 2)
    line = (tmp_path / "system.log").read_text().strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "stored 2 messages"
    assert record["level"] == "INFO"
    assert record["logger"] == "core.memory"


def test_non_owner_processes_follow_the_owners_rotation(tmp_path: Path, restore_root: None) -> None:
    # The worker appends to system.log but never rotates it; the server does.
    setup_logging(tmp_path, console=False, rotates=frozenset({"tasks.log"}))
    handlers = logging.getLogger().handlers
    assert any(isinstance(h, logging.handlers.WatchedFileHandler) for h in handlers)
    log = logging.getLogger("tasks.worker")
    log.info("before the rotation")
    (tmp_path / "system.log").rename(tmp_path / "system.log.1")  # what the owner does
    log.info("after the rotation")
    assert "after the rotation" in (tmp_path / "system.log").read_text()
    assert "after the rotation" not in (tmp_path / "system.log.1").read_text()


def test_a_removed_logs_directory_never_makes_a_log_call_raise(
    tmp_path: Path, restore_root: None
) -> None:
    # The supervisor and the worker append with watched handlers; `mv logs logs.old`
    # made their next log line raise FileNotFoundError (the supervisor died of it).
    logs = tmp_path / "logs"
    setup_logging(logs, console=False, rotates=frozenset())
    log = logging.getLogger("monitoring.supervisor.runner")
    log.info("before the move")
    logs.rename(tmp_path / "logs.old")

    log.info("after the move")
    log.info("and once more")

    assert "before the move" in (tmp_path / "logs.old" / "system.log").read_text()
    text = (logs / "system.log").read_text()
    assert "after the move" in text and "and once more" in text
    assert (logs.stat().st_mode & 0o777) == 0o700


def test_sighup_reopens_the_access_log_too(tmp_path: Path, restore_root: None) -> None:
    # logrotate renames access.log and sends SIGHUP: the server went on writing the
    # renamed file (lost once compressed and removed).
    setup_logging(tmp_path, console=False)
    handler = attach_access_log(tmp_path)
    try:
        access = logging.getLogger(ACCESS_LOGGER)
        access.info("127.0.0.1 GET /before 200 1.0 ms")
        (tmp_path / "access.log").rename(tmp_path / "access.log.1")

        assert reopen_logging()
        access.info("127.0.0.1 GET /after 200 1.0 ms")

        assert "/after" in (tmp_path / "access.log").read_text()
        assert "/after" not in (tmp_path / "access.log.1").read_text()
    finally:
        detach_access_log(handler)


def test_identical_records_are_rate_limited_and_counted(tmp_path: Path, restore_root: None) -> None:
    setup_logging(tmp_path, console=False)
    log = logging.getLogger("vigil.flood")
    for _ in range(5000):
        log.error("accept failed: Too many open files")
    log.warning("a different line")
    text = (tmp_path / "system.log").read_text()
    assert text.count("accept failed") == 10  # the burst, then nothing
    assert "a different line" in text


def test_suppressed_count_reported_after_the_window() -> None:
    from core.logs import RateLimitRepeats

    now = [0.0]
    repeats = RateLimitRepeats(burst=2, window_s=10, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, __file__, 1, "same %s", ("text",), None)

    passed = [repeats.filter(record()) for _ in range(7)]
    assert passed == [True, True, False, False, False, False, False]
    now[0] = 11.0
    late = record()
    assert repeats.filter(late)
    assert "5 identical record(s) suppressed" in late.getMessage()


def test_accept_errors_are_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from core.serving import AcceptErrors

    handler = AcceptErrors(interval_s=60)
    loop = asyncio.new_event_loop()
    try:
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        with caplog.at_level(logging.ERROR, logger="core.serving"):
            for _ in range(500):
                handler(loop, context)
    finally:
        loop.close()
    lines = [r for r in caplog.records if r.name == "core.serving"]
    assert len(lines) == 1 and "Too many open files" in lines[0].getMessage()
    assert handler.total == 500 and handler.count == 499  # told at the next interval
