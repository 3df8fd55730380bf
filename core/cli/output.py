"""Output for the operator CLI: one-line errors, Rich tables, progress bars, JSON.

Results go to stdout (a Rich table, or JSON with ``--json``); errors and
progress go to stderr, so ``--json`` output stays parseable. Every failure is
one line ``vigil: <what went wrong>`` and a non-zero exit, never a traceback:
:func:`guarded` maps Vigil's errors, SQLite and OS errors to exit codes
(2 = bad input, 1 = failure, 130 = interrupted) and logs the unexpected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import typer

from core.config import ConfigError, Settings, load_settings
from core.errors import BadRequest, VigilError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"vigil: {message}", err=True)
    raise typer.Exit(code)


def guarded(fn: F) -> F:
    """Turn every error of a command into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException):
            raise
        except BrokenPipeError:
            raise typer.Exit(0) from None  # e.g. `export | head`: the reader is done
        except (BadRequest, ConfigError) as exc:
            fail(str(exc), 2)
        except VigilError as exc:
            fail(exc.message, 1)
        except sqlite3.Error as exc:
            fail(f"database error: {exc}", 1)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:  # the CLI's boundary: never a traceback on screen
            log.exception("command %s failed", fn.__name__)
            fail(f"unexpected error: {type(exc).__name__}: {exc} (details in logs/system.log)")

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=str, ensure_ascii=False, indent=2))


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_age(ts: float | None, *, now: float | None = None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def fmt_bytes(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def clip(text: str, width: int = 80) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def show_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "none"
) -> None:
    """Print a table; every title and cell is plain text, never Rich markup.

    Chat content is full of brackets (``[/INST]`` from Llama models, search
    snippets marking the match as ``[word]``): parsed as markup it would vanish
    or crash the command with a MarkupError.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text("-" if v is None else str(v)) for v in row))
    if not rows:
        table.add_row(empty, *([""] * (len(columns) - 1)))
    stdout_console().print(table)


# Piped or redirected output (``| less``, ``> file``, ``| grep``) has no width:
# Rich would assume 80 columns and fold every wide cell. Lines of any length
# are what a file or a pager wants.
UNBOUNDED_WIDTH = 100_000


def stdout_console() -> Any:
    """A Rich console for results: the terminal's width, unbounded when not a terminal."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(soft_wrap=False)
    return Console(soft_wrap=False, width=UNBOUNDED_WIDTH, no_color=True, highlight=False)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(phase, done, total)`` callback drawing bars on stderr (TTY only)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda phase, done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bars.add_task(phase, total=total or None)
        bars.update(tasks[phase], completed=done, total=total or None)

    with bars:
        yield update


def cli_settings() -> Settings:
    """Settings for a command, with logging to files (never the console)."""
    settings = load_settings()
    os.umask(0o077)  # anything a command creates (tasks.db, exports) is private
    try:
        from core.logs import setup_logging

        setup_logging(
            settings.logs_dir,
            level=settings.log_level,
            secrets=settings.secrets(),
            json_lines=settings.log_json,
            console=False,
        )
    except OSError:
        pass  # logging to files is a convenience for the CLI, not a precondition
    return settings


def user_path(path: Path | None) -> Path | None:
    """Relative paths are the caller's: scripts/vigilctl runs us from the install dir."""
    if path is None or path.is_absolute():
        return path
    return Path(os.environ.get("VIGILCTL_CWD", ".")) / path


def require_db(settings: Settings) -> None:
    if not settings.db_path.is_file():
        fail(f"no database at {settings.db_path} (start the server once, or restore a backup)")


def check_limit(value: int, name: str = "--limit", top: int = 100_000) -> int:
    if not 1 <= value <= top:
        raise BadRequest(f"{name} must be between 1 and {top}, got {value}")
    return value
