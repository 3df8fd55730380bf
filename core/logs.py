"""Logging, configured once by an entry point.

``logs/system.log`` gets everything; ``logs/telegram.log`` and
``logs/tasks.log`` get their own subsystems too. Files rotate at 10 MB x 3.
Several processes (supervisor, server, worker) write the same files, so each
file is rotated by one owner process only; the others use a
``WatchedFileHandler`` that reopens the file after the owner rotated it
(rotating one file from two processes loses and shuffles lines).
The classic ``time - logger - LEVEL - message`` format, or JSON lines with
``VIGIL_LOG_JSON``. A filter replaces every configured secret with ``***``
before any handler sees the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import Settings

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
# Loggers whose names start with one of these prefixes also go to the file.
# Every module logs as ``__name__``, so a package's prefix catches all its modules
# (``core.telegram`` for ``core.telegram.gateway``, ``core.telegram.bot``, ...).
SUBSYSTEM_FILES = {
    "telegram.log": ("core.telegram", "telethon"),
    "tasks.log": (
        "tasks",
        "huey",
        "core.backups.backup",
        "core.maintenance",
        "core.backups.restore",
    ),
}


class PrefixFilter(logging.Filter):
    """Pass records of loggers named by any of the prefixes (``core.telegram.*``)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(self.prefixes)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(s in text for s in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, "***")
                record.exc_info, record.exc_text = None, text
        return True


class RateLimitRepeats(logging.Filter):
    """Let at most ``burst`` identical records through per ``window_s``.

    Identical: same logger, level, message text and exception type. An attack
    that makes the server log the same error thousands of times a second must
    not rotate the earlier logs (the evidence) away. The first record after a
    window with suppressions says how many were dropped.
    """

    MAX_KEYS = 4096

    def __init__(
        self, *, burst: int = 10, window_s: float = 60.0, clock: Any = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[Any, ...], list[float]] = {}  # key -> [window start, count]
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        # One instance serves every handler: decide once per record.
        decided = getattr(record, "_vigil_passes", None)
        if decided is None:
            decided = self._decide(record)
            record._vigil_passes = decided
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        key = (record.name, record.levelno, record.getMessage(), exc)
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            dropped = int(entry[1]) - self.burst if entry is not None else 0
            if len(self._seen) >= self.MAX_KEYS:
                self._seen.clear()
            self._seen[key] = [now, 1.0]
            if dropped > 0:
                record.msg, record.args = (
                    f"{record.getMessage()} [{dropped} identical record(s) suppressed in the "
                    f"previous {self.window_s:g} s]",
                    (),
                )
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        self.suppressed += 1
        return False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exc_info"] = record.exc_text
        return json.dumps(body, ensure_ascii=False)


ALL_FILES = frozenset({"system.log", *SUBSYSTEM_FILES})


class _WatchedFile(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler whose log calls never raise.

    The stdlib one reopens outside its error handling: with the logs directory
    moved or removed (``mv logs logs.old``), the next log line raised
    FileNotFoundError out of ``log.info`` and killed the supervisor (and so the
    whole service). The directory is made again (0700); any other failure goes
    to ``handleError`` (one report on stderr) and the process goes on.
    """

    def _open(self) -> Any:
        try:
            return super()._open()
        except FileNotFoundError:
            Path(self.baseFilename).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except Exception:
            self.handleError(record)


def _file_handler(path: Path, formatter: logging.Formatter, *, rotate: bool) -> logging.Handler:
    handler: logging.Handler
    if rotate:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    else:
        handler = _WatchedFile(path, encoding="utf-8")
    handler.setFormatter(formatter)
    return handler


# The arguments of the last setup_logging call and the handlers it installed,
# for reopen_logging (SIGHUP).
_ACTIVE: dict[str, Any] = {}
_HANDLERS: list[logging.Handler] = []


def reopen_logging(*, level: str | None = None, json_lines: bool | None = None) -> bool:
    """Close and reopen every log file (logrotate renamed them: new files appear),
    optionally with a new level or format; False when logging was never set up."""
    root = logging.getLogger()
    ours = _HANDLERS
    if not _ACTIVE or not any(h in root.handlers for h in ours):
        return False  # someone else configured logging since: not ours to reopen
    _reopen_access_log()
    foreign = [h for h in root.handlers if h not in ours]
    for handler in foreign:  # kept as they are (e.g. a test's capture handler)
        root.removeHandler(handler)
    values = dict(_ACTIVE)
    if level is not None:
        values["level"] = level
    if json_lines is not None:
        values["json_lines"] = json_lines
    setup_logging(**values)
    for handler in foreign:
        root.addHandler(handler)
    return True


def setup_logging(
    logs_dir: Path,
    *,
    level: str = "INFO",
    secrets: list[str] | None = None,
    json_lines: bool = False,
    console: bool = True,
    rotates: frozenset[str] = ALL_FILES,
) -> None:
    """Configure the root logger; safe to call again (handlers are replaced).

    ``rotates`` names the files this process rotates (it owns them); it only
    appends to the others.
    """
    _ACTIVE.update(
        logs_dir=logs_dir,
        level=level,
        secrets=secrets,
        json_lines=json_lines,
        console=console,
        rotates=rotates,
    )
    logs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(logs_dir, 0o700)
    formatter: logging.Formatter = JsonFormatter() if json_lines else logging.Formatter(FORMAT)
    redact = RedactSecrets(secrets or [])
    repeats = RateLimitRepeats()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    handlers = [_file_handler(logs_dir / "system.log", formatter, rotate="system.log" in rotates)]
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        handlers.append(stream)
    for handler in handlers:
        handler.addFilter(repeats)
        handler.addFilter(redact)
        root.addHandler(handler)
    for filename, prefixes in SUBSYSTEM_FILES.items():
        handler = _file_handler(logs_dir / filename, formatter, rotate=filename in rotates)
        handler.addFilter(PrefixFilter(prefixes))
        handler.addFilter(repeats)
        handler.addFilter(redact)
        root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "aiosqlite", "telethon.network"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _HANDLERS[:] = root.handlers


ACCESS_LOGGER = "vigil.access"
ACCESS_FILE = "access.log"


def attach_access_log(
    logs_dir: Path, *, json_lines: bool = False, secrets: list[str] | None = None
) -> logging.Handler:
    """``logs/access.log`` for the ``vigil.access`` logger only (not in system.log).

    Only the server writes it, so it rotates it (10 MB x 3 like the others).
    The caller removes the returned handler at shutdown (:func:`detach_access_log`).
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    formatter: logging.Formatter = JsonFormatter() if json_lines else logging.Formatter(FORMAT)
    handler = _file_handler(logs_dir / ACCESS_FILE, formatter, rotate=True)
    handler.addFilter(RedactSecrets(secrets or []))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def _reopen_access_log() -> None:
    """SIGHUP: the access log is reopened too (a renamed access.log got every
    later line, and was lost once logrotate compressed and removed it)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        if isinstance(handler, logging.FileHandler):
            with handler.lock or contextlib.nullcontext():
                if handler.stream is not None:
                    handler.stream.close()
                    handler.stream = None  # reopened by the next line


def detach_access_log(handler: logging.Handler) -> None:
    logging.getLogger(ACCESS_LOGGER).removeHandler(handler)
    handler.close()


def start_process_logging(
    settings: Settings, *, rotates: frozenset[str], console: bool | None = None
) -> None:
    """What every Vigil process does first: private files (umask 077), then logs."""
    os.umask(0o077)
    setup_logging(
        settings.logs_dir,
        level=settings.log_level,
        secrets=settings.secrets(),
        json_lines=settings.log_json,
        console=sys.stderr.isatty() if console is None else console,
        rotates=rotates,
    )
