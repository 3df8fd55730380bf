"""Durable restart history: the ``restarts`` table and the supervisor's state file.

The supervisor (a plain process, no event loop) writes through
:class:`RestartLog` with short sqlite3 connections; the server writes its own
graceful exits and reads the history through the async :class:`Database`.
One table, one set of columns, both paths here.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import counters
from core.errors import StorageError
from core.files import write_private
from core.sqlite import connect_sync, migrate_sync

if TYPE_CHECKING:  # the supervisor imports this module and stays without asyncio
    from core.database import Database

log = logging.getLogger(__name__)

COLUMNS = (
    "at",
    "child",
    "reason",
    "exit_code",
    "signal",
    "uptime_s",
    "last_rss_mb",
    "attempt",
    "backoff_s",
    "detail",
)
INSERT = f"INSERT INTO restarts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
STATE_FILE = "supervisor.json"
# The supervisor's lifetime flock (monitoring.supervisor.state_file.StateFile.lock takes it).
SUPERVISOR_LOCK = STATE_FILE + ".lock"
MAX_PENDING = 100
# Planned stops (scripts/stop.sh, systemctl stop) are rows too, but not restarts:
# they are counted in ``vigil_stops`` and left out of every restart count.
PLANNED_REASONS = ("stop",)
_REASON = COLUMNS.index("reason")


def counter_of(reason: str) -> tuple[str, dict[str, str]]:
    """The monotonic counter (name, labels) a restart row with ``reason`` adds 1 to."""
    if reason in PLANNED_REASONS:
        return "vigil_stops", {}
    return "vigil_restarts", {"reason": reason}


def _write_sync(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """The rows and their counters in one transaction (a counter never misses a row)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, rows)
        for row in rows:
            name, labels = counter_of(str(row[_REASON]))
            counters.add_sync(conn, name, 1, labels)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclass
class RestartEvent:
    """One row of the ``restarts`` table: a child's exit and what was done about it.

    The supervisor writes one for every exit it handles; the server writes its
    own graceful exits (``child="server"``, it knows the reason).
    """

    child: str
    reason: str
    at: float
    exit_code: int | None = None
    signal: int | None = None
    uptime_s: float | None = None
    last_rss_mb: float | None = None
    attempt: int | None = None
    backoff_s: float | None = None
    detail: str = ""


def row_values(event: RestartEvent) -> tuple[Any, ...]:
    """Column values in ``COLUMNS`` order."""
    return tuple(getattr(event, name) for name in COLUMNS)


@dataclass
class RestartLog:
    """Synchronous writer used by the supervisor process (injected into it)."""

    db_path: Path
    pending: list[tuple[Any, ...]] = field(default_factory=list)

    def prepare(self) -> None:
        """Create the data dir and migrate the schema (the supervisor starts first)."""
        conn = connect_sync(self.db_path)
        try:
            migrate_sync(conn)
        finally:
            conn.close()

    def record(self, event: RestartEvent) -> None:
        # A record that could not be written (disk full, locked) is kept and
        # written with the next one, so the history has no silent gaps.
        self.pending.append(row_values(event))
        del self.pending[:-MAX_PENDING]
        # Never create: a missing database is the server's to create at start.
        conn = connect_sync(self.db_path, create=False)
        try:
            _write_sync(conn, self.pending)
            self.pending.clear()
        finally:
            conn.close()
        log.info(
            "restart recorded: %s reason=%s exit=%s signal=%s attempt=%s backoff=%s",
            event.child,
            event.reason,
            event.exit_code,
            event.signal,
            event.attempt,
            event.backoff_s,
        )

    def open_alerts(self) -> list[tuple[str, str]]:
        """(alert type, child) of the supervisor's alerts still open, from any earlier run.

        A new supervisor takes these over: it resolves each once that child runs
        healthy, so an alert open when the service was stopped does not stay
        open for ever.
        """
        conn = connect_sync(self.db_path, create=False)
        try:
            rows = conn.execute(
                "SELECT DISTINCT alert_type, message FROM alerts WHERE resolved_at IS NULL"
                " AND alert_type IN ('restart_flap_limit', 'restart_config_error')"
            ).fetchall()
        finally:
            conn.close()
        return sorted({(str(row[0]), str(row[1]).split(" ", 1)[0]) for row in rows})

    def alert(self, alert_type: str, message: str, event: str = "raised") -> None:
        """A critical alert row, for the dashboard and /resources/status history.

        ``event="resolved"`` closes the open rows of that type for the child
        named first in ``message``.
        """
        conn = connect_sync(self.db_path, create=False)
        try:
            if event == "resolved":
                child = message.split(" ", 1)[0]
                conn.execute(
                    "UPDATE alerts SET resolved_at = ? WHERE alert_type = ? "
                    "AND resolved_at IS NULL AND message LIKE ?",
                    (time.time(), alert_type, child + " %"),
                )
                return
            conn.execute(
                "INSERT INTO alerts (alert_type, severity, message, recommended_action, raised_at)"
                " VALUES (?, 'critical', ?, ?, ?)",
                (
                    alert_type,
                    message,
                    "read logs/system.log, fix the cause, then scripts/stop.sh && scripts/start.sh",
                    time.time(),
                ),
            )
        finally:
            conn.close()


async def _write_async(db: Database, values: list[Any] | tuple[Any, ...]) -> None:
    name, labels = counter_of(str(values[_REASON]))
    async with db.transaction() as tx:
        await tx.execute(INSERT, values)
        await tx.execute(counters.UPSERT, (name, counters.encode_labels(labels), 1, time.time()))


async def record_async(db: Database, event: RestartEvent) -> None:
    """The server's own record (a graceful exit) and its counter, in one transaction."""
    await _write_async(db, row_values(event))


PENDING_FILE = "restart_pending.json"


def save_pending_record(data_dir: Path, event: RestartEvent) -> None:
    """Keep a restart record for the next server to write (its database was replaced)."""
    write_private(data_dir / PENDING_FILE, json.dumps(list(row_values(event))))


async def record_pending(db: Database, data_dir: Path) -> bool:
    """At start: write the record the previous server could not, then forget it."""
    path = data_dir / PENDING_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.warning("ignoring an unreadable %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return False
    try:
        if not isinstance(values, list) or len(values) != len(COLUMNS):
            raise ValueError("not a restart record")
        await _write_async(db, values)
    except (ValueError, StorageError) as exc:
        log.warning("could not record the previous server's restart: %s", exc)
        if isinstance(exc, ValueError):
            path.unlink(missing_ok=True)
        return False
    path.unlink(missing_ok=True)
    return True


async def history(db: Database, *, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
    """Newest first; returns (total, entries)."""
    total = int(await db.scalar("SELECT count(*) FROM restarts") or 0)
    rows = await db.fetchall(
        f"SELECT id, {', '.join(COLUMNS)} FROM restarts ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
        (limit, offset),
    )
    return total, [dict(row) for row in rows]


async def counts_since(db: Database, since: float) -> dict[str, int]:
    """Rows per reason since ``since`` (epoch seconds), for the weekly review.

    Planned stops come as their own reason (``stop``): not restarts; add up
    the other reasons (or use :func:`split_planned`) for a restart count.
    """
    rows = await db.fetchall(
        "SELECT reason, count(*) AS n FROM restarts WHERE at >= ? GROUP BY reason ORDER BY reason",
        (since,),
    )
    return {row["reason"]: int(row["n"]) for row in rows}


def restart_summary_sync(conn: sqlite3.Connection, *, now: float) -> dict[str, Any]:
    """The rows kept, for ``status``: restarts (planned stops left out) and stops apart.

    ``total``/``last_24h``/``by_reason_24h`` count restarts only; ``stops`` the
    planned stops; ``recent`` the newest five rows of either (``reason`` tells).
    """
    planned = f"reason IN ({', '.join('?' * len(PLANNED_REASONS))})"

    def count(where: str, *params: Any) -> int:
        sql = f"SELECT count(*) FROM restarts WHERE {where}"
        return int(conn.execute(sql, params).fetchone()[0])

    day = now - 86400
    rows = conn.execute(
        f"SELECT reason, count(*) FROM restarts WHERE at >= ? AND NOT {planned} GROUP BY reason",
        (day, *PLANNED_REASONS),
    ).fetchall()
    recent = conn.execute(
        "SELECT at, child, reason, exit_code, uptime_s FROM restarts"
        " ORDER BY at DESC, id DESC LIMIT 5"
    ).fetchall()
    return {
        "total": count(f"NOT {planned}", *PLANNED_REASONS),
        "last_24h": count(f"at >= ? AND NOT {planned}", day, *PLANNED_REASONS),
        "by_reason_24h": {str(r[0]): int(r[1]) for r in rows},
        "stops": {
            "total": count(planned, *PLANNED_REASONS),
            "last_24h": count(f"at >= ? AND {planned}", day, *PLANNED_REASONS),
        },
        "recent": [dict(r) for r in recent],
    }


def split_planned(by_reason: dict[str, int]) -> tuple[dict[str, int], int]:
    """``{reason: n}`` -> (restarts by reason without the planned stops, stops)."""
    restarts = {r: n for r, n in by_reason.items() if r not in PLANNED_REASONS}
    return restarts, sum(n for r, n in by_reason.items() if r in PLANNED_REASONS)


def read_supervisor_state(data_dir: Path, *, parent_pid: int | None = None) -> dict[str, Any]:
    """The supervisor's state file, with ``supervised`` telling whether it is ours."""
    path = data_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"supervised": False, "children": {}}
    except (OSError, ValueError) as exc:
        return {"supervised": False, "children": {}, "error": f"unreadable {path.name}: {exc}"}
    children = state.get("children", {}) if isinstance(state, dict) else None
    if not isinstance(children, dict) or not all(isinstance(c, dict) for c in children.values()):
        # Valid JSON of another shape (hand-edited, another tool's file): callers
        # index into it, so it must never leave here as anything but this shape.
        return {
            "supervised": False,
            "children": {},
            "error": f"unreadable {path.name}: wrong shape",
        }
    pid = state.get("pid")
    parent = os.getppid() if parent_pid is None else parent_pid
    state["supervised"] = bool(pid) and pid == parent and not state.get("stopped")
    return state
