"""read_backup_state: the status of backups, judged from the backup_runs table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.backups.state import cron_period_s, read_backup_state
from core.config import Settings
from core.sqlite import connect_sync, migrate_sync
from tests.conftest import make_settings

NOW = 1_800_000_000.0


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    (tmp_path / "data").mkdir()
    c = connect_sync(tmp_path / "data" / "system.db")
    migrate_sync(c)
    yield c
    c.close()


def _run(conn: sqlite3.Connection, at: float, ok: bool, error: str | None = None) -> None:
    conn.execute(
        "INSERT INTO backup_runs (started_at, finished_at, ok, trigger, path, size_bytes, error)"
        " VALUES (?, ?, ?, 'scheduled', ?, ?, ?)",
        (at - 1, at, int(ok), "/b/x.db.gz" if ok else None, 123 if ok else None, error),
    )


def test_periods_of_common_schedules() -> None:
    assert cron_period_s("0 * * * *") == 3600
    assert cron_period_s("0 */6 * * *") == 6 * 3600
    assert cron_period_s("30 3 * * *") == 86400
    assert cron_period_s("0 4 * * 0") == 7 * 86400
    assert cron_period_s("off") is None


def test_never_then_ok_then_stale_then_failed(conn: sqlite3.Connection, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # hourly backups: stale after 2 h
    state = read_backup_state(conn, settings, NOW)
    assert (state.status, state.reason, state.period_s) == ("never", None, 3600)
    _run(conn, NOW - 600, ok=True)
    state = read_backup_state(conn, settings, NOW)
    assert state.status == "ok" and state.age_s == 600 and state.last_success_size_bytes == 123
    state = read_backup_state(conn, settings, NOW + 2 * 3600)
    assert (state.status, state.reason) == ("stale", "backup_stale")
    assert "stale after 2.0 h" in state.message()
    _run(conn, NOW + 60, ok=False, error="Permission denied")
    state = read_backup_state(conn, settings, NOW + 120)
    assert (state.status, state.reason, state.failures_24h) == ("failed", "backup_failed", 1)
    assert state.last_failure_error == "Permission denied"
    _run(conn, NOW + 180, ok=True)  # recovery
    state = read_backup_state(conn, settings, NOW + 200)
    assert (state.status, state.failures_24h) == ("ok", 1)
    assert read_backup_state(conn, settings, NOW + 200 + 86400).failures_24h == 0


def test_running_attempts_are_ignored(conn: sqlite3.Connection, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    _run(conn, NOW - 60, ok=True)
    conn.execute("INSERT INTO backup_runs (started_at, trigger) VALUES (?, 'cli')", (NOW - 5,))
    assert read_backup_state(conn, settings, NOW).status == "ok"


def test_period_follows_the_schedule_and_off_disables(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    six: Settings = make_settings(tmp_path, task_schedule={"backup": "0 */6 * * *"})
    _run(conn, NOW - 5 * 3600, ok=True)
    assert read_backup_state(conn, six, NOW).status == "ok"  # hourly would be stale
    off = make_settings(tmp_path, task_schedule={"backup": "off"})
    state = read_backup_state(conn, off, NOW + 30 * 86400)
    assert (state.status, state.period_s, state.reason) == ("disabled", None, None)
    _run(conn, NOW, ok=False, error="boom")  # a failed manual backup still alerts
    assert read_backup_state(conn, off, NOW).status == "failed"
