"""Maintenance functions on a real database: task records, retention, VACUUM."""

from __future__ import annotations

import sqlite3
import time

from core.backups.integrity import validate_database
from core.config import Settings
from core.database import connect_sync
from core.maintenance import (
    BATCH,
    cleanup_old_events,
    cleanup_old_tasks,
    daily_maintenance,
    delete_old_messages,
    mark_interrupted_runs,
    overflowed_chats,
    record_finished,
    record_queued,
    record_running,
    vacuum_if_worthwhile,
)
from tests.operator_cli import fill

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def _tasks(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [
        (r["name"], r["status"]) for r in conn.execute("SELECT * FROM server_tasks ORDER BY id")
    ]


def test_a_run_moves_from_queued_to_completed_or_failed(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    record_queued(conn, "t1", "backup")
    row = record_running(conn, "t1", "backup")
    record_finished(conn, row, duration_s=1.5, result={"ok": True})
    other = record_running(conn, "t2", "vacuum")  # periodic runs may skip 'queued'
    record_finished(conn, other, duration_s=0.1, error="OSError: boom")
    record_running(conn, "t3", "maintenance")
    assert _tasks(conn) == [
        ("backup", "completed"),
        ("vacuum", "failed"),
        ("maintenance", "running"),
    ]
    assert mark_interrupted_runs(conn) == 1
    last = conn.execute("SELECT status, error FROM server_tasks WHERE task_id = 't3'").fetchone()
    assert tuple(last) == ("failed", "interrupted: the worker stopped")
    conn.close()


def test_cleanup_old_tasks_keeps_recent_and_unfinished_runs(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    old, recent = "2027-01-01 00:00:00", "2027-01-14 00:00:00"
    for name, status, processed in [
        ("a", "completed", old),
        ("b", "failed", old),
        ("c", "completed", recent),
        ("d", "running", None),
        ("e", "queued", None),
    ]:
        conn.execute(
            "INSERT INTO server_tasks (name, status, created_at, processed_at)"
            " VALUES (?, ?, '2026-12-01 00:00:00', ?)",
            (name, status, processed),
        )
    assert cleanup_old_tasks(conn, days=7, now=NOW) == 2
    assert [n for n, _ in _tasks(conn)] == ["c", "d", "e"]
    conn.close()


def test_message_retention_deletes_in_batches_and_keeps_the_index(filled: Settings) -> None:
    fill(filled.db_path, BATCH + 700, chats=2, start=NOW - 40 * 86400)
    fill(filled.db_path, 50, chats=2, start=NOW - 3600)
    conn = connect_sync(filled.db_path)
    before = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    deleted = delete_old_messages(conn, days=30, now=NOW)
    assert deleted == before - 50
    counts = conn.execute("SELECT sum(message_count) FROM chats").fetchone()[0]
    conn.close()
    assert counts == 50
    assert all(c.is_ok for c in validate_database(filled.db_path))


def test_vacuum_only_when_worth_it(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    assert vacuum_if_worthwhile(conn, filled.db_path)["vacuum"].startswith("skipped: only")
    fill(filled.db_path, 5000, start=1.0)
    conn.execute("DELETE FROM messages WHERE created_at < 10000")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result = vacuum_if_worthwhile(conn, filled.db_path)
    assert result["vacuum"] == "done"
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    huge = vacuum_if_worthwhile(conn, filled.db_path, min_free_ratio=-1.0)
    assert huge["vacuum"] == "done"  # a negative ratio forces it: the disk check still applies
    conn.close()


def test_daily_maintenance_and_overflowed_chats(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    result = daily_maintenance(conn)
    assert result["checkpoint"]["busy"] == 0
    assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0
    conn.execute(
        "UPDATE chats SET summary = '- user: hi', summary_upto_id = 5, updated_at = ?"
        " WHERE id = 'local:c1'",
        (time.time(),),
    )
    assert overflowed_chats(conn, since=time.time() - 60) == ["local:c1"]
    conn.close()


def test_cleanup_old_events_deletes_old_resolved_alerts_and_old_restarts(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    old, recent = NOW - 91 * 86400, NOW - 89 * 86400
    for name, raised, resolved in [
        ("old_resolved", old, old + 60),
        ("old_open", old, None),  # still open: kept whatever its age
        ("recent_resolved", recent, recent + 60),
    ]:
        conn.execute(
            "INSERT INTO alerts (alert_type, severity, message, raised_at, resolved_at)"
            " VALUES (?, 'high', 'x', ?, ?)",
            (name, raised, resolved),
        )
    for at in (old, old + 1, recent):
        conn.execute(
            "INSERT INTO restarts (at, child, reason) VALUES (?, 'server', 'crash')", (at,)
        )
    assert cleanup_old_events(conn, now=NOW) == {"alerts": 1, "restarts": 2}
    alerts = [r[0] for r in conn.execute("SELECT alert_type FROM alerts ORDER BY id")]
    assert alerts == ["old_open", "recent_resolved"]
    assert [r[0] for r in conn.execute("SELECT at FROM restarts")] == [recent]
    conn.close()
