"""Every backup attempt, recorded in ``backup_runs`` (the scheduled task, the CLI, start.sh).

:func:`take_backup` is the one entry point that takes a snapshot *and*
records it: a row when it starts, finished with ``ok`` 1 (path, size) or 0
(the error's one line). A failure also increases the ``vigil_backup_failures``
counter in the same transaction as its row, so the exported
``vigil_backup_failures_total`` and the row never disagree.

The server learns about backups only from this table (see ``state.py``): the
worker and the CLI are other processes. The table lives in ``system.db``,
which may be on another disk than the backups, or be unwritable itself: then
the attempt is logged (one line, no traceback) and the backup's own outcome
is still returned or raised.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from core import counters
from core.backups.backup import (
    Extras,
    Progress,
    Snapshot,
    check_new_name,
    create_backup,
    no_progress,
    refuse_existing,
)
from core.backups.extras import collect_extras
from core.config import Settings
from core.sqlite import connect_sync

log = logging.getLogger(__name__)

FAILURE_COUNTER = "vigil_backup_failures"
# Who asked for the backup (backup_runs.trigger).
TRIGGERS = ("scheduled", "cli", "task", "pre-migration", "pre-restore", "api")
MAX_ERROR_CHARS = 500


def _connect(db_path: Path) -> sqlite3.Connection:
    return connect_sync(db_path, create=False)  # never create a database to record in


def record_start(db_path: Path, trigger: str, now: float) -> int | None:
    """Insert the running row; None (logged) when the database cannot take it."""
    try:
        conn = _connect(db_path)
        try:
            cur = conn.execute(
                "INSERT INTO backup_runs (started_at, trigger) VALUES (?, ?)", (now, trigger)
            )
            return int(cur.lastrowid) if cur.lastrowid is not None else None
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as exc:
        log.warning("could not record the start of a backup in %s: %s", db_path, exc)
        return None


def record_finish(
    db_path: Path,
    run_id: int | None,
    *,
    trigger: str,
    started_at: float,
    ok: bool | None,
    path: Path | None = None,
    size_bytes: int | None = None,
    error: str | None = None,
    now: float | None = None,
) -> bool:
    """Finish the row (or insert a whole one); a failure also counts. False if not recorded.

    ``ok=None`` (an interrupted attempt: Ctrl-C) finishes the row as neither
    success nor failure: it neither alerts nor counts.
    """
    finished = time.time() if now is None else now
    if error is not None:
        error = " ".join(error.split())[:MAX_ERROR_CHARS]
    values = (
        finished,
        None if ok is None else int(ok),
        str(path) if path else None,
        size_bytes,
        error,
    )
    try:
        conn = _connect(db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                updated = 0
                if run_id is not None:
                    updated = conn.execute(
                        "UPDATE backup_runs SET finished_at = ?, ok = ?, path = ?, "
                        "size_bytes = ?, error = ? WHERE id = ?",
                        (*values, run_id),
                    ).rowcount
                if not updated:
                    conn.execute(
                        "INSERT INTO backup_runs (finished_at, ok, path, size_bytes, error, "
                        "started_at, trigger) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*values, started_at, trigger),
                    )
                if ok is False:
                    counters.add_sync(conn, FAILURE_COUNTER, 1, now=finished)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as exc:
        log.warning(
            "could not record the %s backup in %s: %s",
            "failed" if ok is False else "finished",
            db_path,
            exc,
        )
        return False
    return True


def error_line(exc: BaseException) -> str:
    """The one line an operator reads for a failed backup."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message).splitlines()[0] if str(message) else type(exc).__name__


def take_backup(
    settings: Settings,
    *,
    trigger: str,
    kind: str = "manual",
    name: str | None = None,
    with_secrets: bool = False,
    progress: Progress = no_progress,
    now: float | None = None,
) -> Snapshot:
    """Take one snapshot of ``settings.db_path`` into ``settings.backups_dir``, recorded.

    Raises what :func:`create_backup` raises (after recording the failure).
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}")
    if name:  # the operator's mistakes are refused before anything counts as an attempt
        name = check_new_name(name)
        refuse_existing(settings.backups_dir, name)
    started = time.time() if now is None else now
    run_id = record_start(settings.db_path, trigger, started)
    try:
        snapshot = create_backup(
            settings.db_path,
            settings.backups_dir,
            name=name,
            kind=kind,
            now=now,
            progress=progress,
            extras=snapshot_extras(settings, with_secrets=with_secrets),
            media_root=settings.media_dir,
        )
    except (KeyboardInterrupt, SystemExit):
        record_finish(
            settings.db_path,
            run_id,
            trigger=trigger,
            started_at=started,
            ok=None,
            error="interrupted",
        )
        raise
    except BaseException as exc:
        record_finish(
            settings.db_path,
            run_id,
            trigger=trigger,
            started_at=started,
            ok=False,
            error=error_line(exc),
        )
        log.error("backup failed (%s): %s", trigger, error_line(exc))
        raise
    record_finish(
        settings.db_path,
        run_id,
        trigger=trigger,
        started_at=started,
        ok=True,
        path=snapshot.path,
        size_bytes=snapshot.total_bytes,
    )
    return snapshot


def snapshot_extras(settings: Settings, *, with_secrets: bool) -> Extras:
    """What a snapshot holds besides the database: the session and the settings files."""
    return collect_extras(settings, with_secrets=with_secrets)
