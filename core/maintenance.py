"""Database maintenance and the ``server_tasks`` record of background runs.

Plain synchronous functions on a ``sqlite3`` connection (``connect_sync``),
shared by the Huey tasks and the CLI. Deletes run in small batches, each its
own short write transaction, so the server's writer never waits long while
a cleanup runs next to it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core import counters
from core.restarts import restart_summary_sync

log = logging.getLogger(__name__)

BATCH = 2000
VACUUM_MIN_FREE_RATIO = 0.10
# Resolved alerts and restart records are kept this long: long enough for a
# quarter's review, short enough that /metrics' GROUP BY on restarts stays cheap.
EVENT_RETENTION_DAYS = 90


def _utc_text(at: float) -> str:
    """The ``datetime('now')`` text format the server_tasks table uses."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- server_tasks -------------------------------------------------------------
def record_queued(conn: sqlite3.Connection, task_id: str, name: str) -> None:
    conn.execute(
        "INSERT INTO server_tasks (task_id, name, status, created_at) VALUES (?, ?, 'queued', ?)",
        (task_id, name, _utc_text(time.time())),
    )


def record_running(conn: sqlite3.Connection, task_id: str, name: str) -> int:
    """Mark the queued row running (or add one: periodic runs may skip 'queued')."""
    cursor = conn.execute(
        "UPDATE server_tasks SET status = 'running' WHERE task_id = ? AND status = 'queued'",
        (task_id,),
    )
    if cursor.rowcount:
        row = conn.execute(
            "SELECT id FROM server_tasks WHERE task_id = ? ORDER BY id DESC LIMIT 1", (task_id,)
        ).fetchone()
        return int(row[0])
    cursor = conn.execute(
        "INSERT INTO server_tasks (task_id, name, status, created_at) VALUES (?, ?, 'running', ?)",
        (task_id, name, _utc_text(time.time())),
    )
    return int(cursor.lastrowid or 0)


def record_finished(
    conn: sqlite3.Connection,
    row_id: int,
    *,
    duration_s: float,
    result: Any = None,
    error: str | None = None,
) -> None:
    conn.execute(
        "UPDATE server_tasks SET status = ?, processed_at = ?, duration_s = ?, error = ?,"
        " result = ? WHERE id = ?",
        (
            "failed" if error else "completed",
            _utc_text(time.time()),
            round(duration_s, 4),
            error[:2000] if error else None,
            json.dumps(result, default=str)[:4000] if result is not None else None,
            row_id,
        ),
    )
    if error:
        counters.add_sync(conn, "vigil_errors", 1, {"kind": "task"})


def mark_interrupted_runs(conn: sqlite3.Connection) -> int:
    """Runs left 'running' by a worker that was killed become 'failed'."""
    cursor = conn.execute(
        "UPDATE server_tasks SET status = 'failed', error = 'interrupted: the worker stopped',"
        " processed_at = ? WHERE status = 'running'",
        (_utc_text(time.time()),),
    )
    if cursor.rowcount > 0:
        counters.add_sync(conn, "vigil_errors", cursor.rowcount, {"kind": "task"})
    return int(cursor.rowcount)


def recent_tasks(conn: sqlite3.Connection, *, limit: int = 10) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, task_id, name, status, created_at, processed_at, duration_s, error, result"
        " FROM server_tasks ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [dict(r) for r in rows]


def _delete_in_batches(
    conn: sqlite3.Connection, table: str, where: str, params: tuple[Any, ...]
) -> int:
    """Delete ``table`` rows matching ``where``, BATCH at a time, each batch committed."""
    select = f"SELECT id FROM {table} WHERE {where} ORDER BY id LIMIT {BATCH}"
    total = 0
    while True:
        ids = [r[0] for r in conn.execute(select, params).fetchall()]
        if not ids:
            return total
        marks = ",".join("?" * len(ids))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        total += len(ids)


def cleanup_old_tasks(conn: sqlite3.Connection, *, days: int, now: float | None = None) -> int:
    """Delete completed/failed ``server_tasks`` rows processed over ``days`` ago."""
    cutoff = _utc_text((time.time() if now is None else now) - days * 86400)
    deleted = _delete_in_batches(
        conn,
        "server_tasks",
        "status IN ('completed', 'failed') AND processed_at < ?",
        (cutoff,),
    )
    log.info("cleanup_old_tasks: deleted %d task records older than %d days", deleted, days)
    return deleted


def cleanup_old_events(
    conn: sqlite3.Connection, *, days: int = EVENT_RETENTION_DAYS, now: float | None = None
) -> dict[str, int]:
    """Delete resolved ``alerts`` and ``restarts`` rows older than ``days``.

    An alert still open is kept whatever its age: it is still news.
    """
    cutoff = (time.time() if now is None else now) - days * 86400
    alerts = _delete_in_batches(
        conn, "alerts", "resolved_at IS NOT NULL AND resolved_at < ?", (cutoff,)
    )
    restarts = _delete_in_batches(conn, "restarts", "at < ?", (cutoff,))
    log.info(
        "event retention: deleted %d resolved alerts and %d restart records older than %d days",
        alerts,
        restarts,
        days,
    )
    return {"alerts": alerts, "restarts": restarts}


def delete_old_messages(conn: sqlite3.Connection, *, days: int, now: float | None = None) -> int:
    """Message retention: delete messages older than ``days`` (FTS follows by trigger)."""
    cutoff = (time.time() if now is None else now) - days * 86400
    deleted = _delete_in_batches(conn, "messages", "created_at < ?", (cutoff,))
    log.info("message retention: deleted %d messages older than %d days", deleted, days)
    return deleted


# --- maintenance ----------------------------------------------------------------
def checkpoint(conn: sqlite3.Connection, mode: str = "TRUNCATE") -> dict[str, int]:
    """``wal_checkpoint``; busy=1 means a reader held it back (harmless, retried later)."""
    if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
        raise ValueError(mode)
    busy, log_pages, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return {"busy": int(busy), "wal_pages": int(log_pages), "checkpointed": int(done)}


def daily_maintenance(conn: sqlite3.Connection) -> dict[str, Any]:
    """The daily job: checkpoint, ANALYZE, ``PRAGMA optimize``."""
    started = time.monotonic()
    result: dict[str, Any] = {"checkpoint": checkpoint(conn, "TRUNCATE")}
    conn.execute("ANALYZE")
    conn.execute("PRAGMA optimize")
    result["duration_s"] = round(time.monotonic() - started, 3)
    log.info("daily maintenance done: %s", result)
    return result


def vacuum_if_worthwhile(
    conn: sqlite3.Connection, db_path: Path, *, min_free_ratio: float = VACUUM_MIN_FREE_RATIO
) -> dict[str, Any]:
    """VACUUM only when free pages make it worth it and the disk can hold a copy.

    VACUUM rewrites the whole file (needs about twice its size on disk) and
    holds the write lock meanwhile, so it is skipped when it would gain little.
    """
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    size = db_path.stat().st_size
    disk_free = shutil.disk_usage(db_path.parent).free
    result: dict[str, Any] = {"pages": pages, "free_pages": free_pages, "db_bytes": size}
    if pages == 0 or free_pages / pages < min_free_ratio:
        result["vacuum"] = f"skipped: only {free_pages} of {pages} pages free"
    elif disk_free < size * 2.2:
        result["vacuum"] = (
            f"skipped: {disk_free / 1e6:.0f} MB free disk, need {size * 2.2 / 1e6:.0f}"
        )
        log.warning("VACUUM skipped: not enough free disk (%s)", result["vacuum"])
    else:
        started = time.monotonic()
        # The transient copy on disk, not in this process's memory (temp_store=MEMORY
        # from the pragmas would grow the worker by the database's size).
        store = int(conn.execute("PRAGMA temp_store").fetchone()[0])
        conn.execute("PRAGMA temp_store=FILE")
        try:
            conn.execute("VACUUM")
        finally:
            conn.execute(f"PRAGMA temp_store={store}")
        result["vacuum"] = "done"
        result["duration_s"] = round(time.monotonic() - started, 3)
        result["db_bytes_after"] = db_path.stat().st_size
    log.info("weekly vacuum: %s", result)
    return result


def overflowed_chats(conn: sqlite3.Connection, *, since: float, limit: int = 20) -> list[str]:
    """Chats whose context overflowed into an (extractive) summary lately."""
    rows = conn.execute(
        "SELECT id FROM chats WHERE summary_upto_id > 0 AND summary LIKE '- %'"
        " AND updated_at >= ? ORDER BY updated_at DESC LIMIT ?",
        (since, limit),
    ).fetchall()
    return [str(r[0]) for r in rows]


# --- reads for the CLI ------------------------------------------------------------
def database_summary(conn: sqlite3.Connection, *, now: float | None = None) -> dict[str, Any]:
    """Counts for ``status``: messages, chats, schema, restarts and task runs."""
    now = time.time() if now is None else now
    one = conn.execute
    summary: dict[str, Any] = {
        "schema_version": int(one("PRAGMA user_version").fetchone()[0]),
        "chats": int(one("SELECT count(*) FROM chats").fetchone()[0]),
        "messages": int(one("SELECT count(*) FROM messages").fetchone()[0]),
        "last_message_at": one("SELECT max(created_at) FROM messages").fetchone()[0],
    }
    summary["restarts"] = restart_summary_sync(conn, now=now)
    summary["tasks"] = {
        "failed_24h": int(
            one(
                "SELECT count(*) FROM server_tasks WHERE status = 'failed' AND processed_at >= ?",
                (_utc_text(now - 86400),),
            ).fetchone()[0]
        ),
        "recent": recent_tasks(conn, limit=5),
    }
    return summary


def count_messages(conn: sqlite3.Connection, *, chat_id: str | None = None) -> int:
    if chat_id is None:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    row = conn.execute("SELECT count(*) FROM messages WHERE chat_id = ?", (chat_id,)).fetchone()
    return int(row[0])


def iter_messages(
    conn: sqlite3.Connection, *, chat_id: str | None = None, batch: int = 2000
) -> Iterator[dict[str, Any]]:
    """Every message oldest first (keyset pages: constant memory on any size)."""
    last = 0
    where = "id > ?" + (" AND chat_id = ?" if chat_id is not None else "")
    while True:
        params: tuple[Any, ...] = (last, chat_id) if chat_id is not None else (last,)
        rows = conn.execute(
            "SELECT id, chat_id, role, content, tokens, created_at, author, external_id"
            f" FROM messages WHERE {where} ORDER BY id LIMIT {batch}",
            params,
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield dict(row)
        last = int(rows[-1]["id"])
