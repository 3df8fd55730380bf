"""Shared by the CLI, backup and task tests: a filled database, CLI environments.

The fixtures (``tsettings``, ``filled``, ``fake_server_process``) reach the
tests through the conftest.py files that import them; ``restore_logging`` is
autouse wherever it is imported (the operator CLI tests).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.config import Settings
from core.database import connect_sync, migrate_sync
from tests.conftest import make_settings
from tests.fake_llm import dead_url

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"


def fill(db_path: Path, count: int, *, chats: int = 3, start: float = 1.7e9) -> None:
    """``count`` messages over ``chats`` chats, in one transaction (triggers keep FTS)."""
    conn = connect_sync(db_path)
    try:
        migrate_sync(conn)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES (?, ?, ?, 5, ?)",
            (
                (
                    f"local:c{i % chats}",
                    "user" if i % 2 == 0 else "assistant",
                    f"message {i} about apples and pears. Second sentence {i}.",
                    start + i,
                )
                for i in range(count)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture
def tsettings(tmp_path: Path) -> Settings:
    """Settings on tmp dirs with a model URL where nothing listens."""
    return make_settings(tmp_path, llm_base_url=dead_url())


@pytest.fixture
def filled(tsettings: Settings) -> Settings:
    fill(tsettings.db_path, 300)
    return tsettings


def cli_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """Environment for a CLI/worker subprocess using ``settings``' directories."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        {
            "VIGIL_DATA_DIR": str(settings.data_dir),
            "VIGIL_LOGS_DIR": str(settings.logs_dir),
            "VIGIL_PORT": str(settings.port),
            "VIGIL_ADMIN_TOKEN": "test-token",
            "VIGIL_LLM_BASE_URL": settings.llm_base_url,
        }
    )
    env.update({f"VIGIL_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def run_cli(
    settings: Settings, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python main.py ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        env=cli_env(settings),
        cwd=cwd or settings.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def fake_server_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line looks like Vigil's (``... main.py``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "main.py", "supervise"]
    )
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = connect_sync(db_path, readonly=True)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures logging and the umask like any entry point; undo both."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def invoke(settings: Settings, *args: str) -> Any:
    """``main.py ARGS`` in this process, through Typer's CliRunner."""
    from main import cli

    return CliRunner().invoke(cli, list(args), env=cli_env(settings), catch_exceptions=False)
