"""Start-up checks run before the supervisor is launched.

Run by ``scripts/prepare.sh`` (start.sh and systemd's ``ExecStartPre``) under
the supervisor's lock; while a live supervisor holds it, nothing is checked or
changed. In order: report the Telegram auth state, recover database locks (a
``-wal``/``-shm`` left by a killed process is folded back by opening and
checkpointing), a quick integrity check, then initialise or migrate the
schema; before an existing database is migrated, a verified snapshot
(``pre-migration-vN-TIME``) is taken, and a failed one blocks the migration.
A corrupt database, and an empty (0-byte) one, which is what a failed copy
leaves, is refused with a message naming
``scripts/vigilctl validate`` and ``scripts/vigilctl restore``; it is never
replaced or "repaired" here. Only a missing file is created.
``release_locks`` is ``stop.sh``'s last step.
``database_problem`` is the read-only subset for ``python main.py serve``
started by hand (without start.sh), so a corrupt database is one line on the
console there too.
"""

from __future__ import annotations

import importlib
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from core.backups.backup import readonly_uri
from core.backups.file_users import exclusive_lock
from core.config import ConfigError, Settings
from core.database import NewerSchema, connect_sync, guard_stale_wal, migrate_sync
from core.process import SUPERVISOR_LOCK_NAME, running_supervisor, started_from
from core.schema import SCHEMA_VERSION
from core.telegram.session import check_session_server, server_profile

SQLITE_HEADER = b"SQLite format 3\x00"

EXIT_OK = 0
EXIT_CORRUPT = 3
EXIT_FAILED = 4


class PreflightError(Exception):
    """A check failed; ``str()`` is the operator's message, ``exit_code`` the status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)


def _corrupt(path: Path, problem: str, *, hint: str = "") -> PreflightError:
    return PreflightError(
        f"the database {path} looks corrupt ({problem}). It was left untouched. "
        "Check it with 'scripts/vigilctl validate', list snapshots with "
        "'scripts/vigilctl snapshots', then 'scripts/vigilctl restore <name> --confirm'"
        f"{hint} (docs/operations.md, section 8.2)",
        EXIT_CORRUPT,
    )


def _empty(path: Path) -> PreflightError:
    # A failed copy or restore leaves a 0-byte file; SQLite would open it as a
    # new empty database and the history would silently start over.
    return _corrupt(
        path,
        "the file is empty: 0 bytes",
        hint="; if this is a new install with no history, remove the empty file instead",
    )


def telegram_state(settings: Settings) -> str:
    """One line about Telegram for the start-up report (offline: no network, no Telethon).

    Refuses (PreflightError) what would make the Telegram client fail at once:
    a bad server setting, or a session made for another Telegram server.
    """
    if not settings.telegram_configured:
        return "telegram: not configured (local chat only; see docs/telegram.md to add it)"
    session = settings.session_path
    try:
        profile = server_profile(settings)
        check_session_server(session, profile)
    except ConfigError as exc:
        raise PreflightError(f"telegram: {exc}") from None
    kind = "bot" if settings.telegram_bot_token else "user account"
    if not _has_auth_key(session):
        if settings.telegram_bot_token:
            return f"telegram: {kind} not logged in yet; the server logs the bot in at start"
        return (
            f"telegram: configured ({kind}) but not logged in (no authorised "
            f"{session.name}); run scripts/telegram_login.sh"
        )
    mode = session.stat().st_mode & 0o777
    warning = f"; WARNING: {session.name} has mode {mode:o}, should be 600" if mode & 0o077 else ""
    return (
        f"telegram: logged in ({kind}, server {profile.label}); "
        f"the connection is checked once the server runs{warning}"
    )


def _has_auth_key(session: Path) -> bool:
    """Telethon keeps its auth key in the session's SQLite ``sessions`` table."""
    if not session.exists() or session.stat().st_size == 0:
        return False
    try:
        conn = sqlite3.connect(readonly_uri(session), uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT auth_key FROM sessions LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True  # not readable as expected: let the Telegram client judge it
    return bool(row and row[0])


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise PreflightError(f"cannot read {path}: {exc.strerror}") from exc
    if head and head != SQLITE_HEADER:
        raise _corrupt(path, "not an SQLite file")


def recover_and_check(path: Path, report: Report) -> None:
    """Fold a stale WAL back and run ``PRAGMA quick_check`` without changing data."""
    for moved in guard_stale_wal(path):  # the old file's WAL, never folded into this one
        report.say(f"database: kept {moved.name} aside (it belongs to a replaced database)")
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    stale = [p.name for p in (wal, shm) if p.exists()]
    try:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise PreflightError(f"cannot open {path}: {exc}") from exc
    try:
        if stale:
            busy, _frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise PreflightError(
                    f"{path} is locked by another process; is another Vigil using this data dir?"
                )
            report.say(f"database: recovered stale {', '.join(stale)} ({done} WAL frame(s) kept)")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise PreflightError(f"{path} is locked by another process: {exc}") from exc
        raise _corrupt(path, str(exc)) from exc
    finally:
        conn.close()
    if problems != ["ok"]:
        raise _corrupt(path, "; ".join(problems)[:300])
    report.say("database: integrity quick check ok")


def check_database(
    path: Path, report: Report, *, before_migration: Callable[[int], None] | None = None
) -> None:
    """Header, stale-lock recovery, quick check, then create or migrate the schema.

    ``before_migration(version)`` runs first when an existing database will
    be migrated (0 < version < SCHEMA_VERSION): the pre-migration snapshot;
    it raises PreflightError to block the migration.
    """
    if path.exists():
        if path.stat().st_size == 0:
            raise _empty(path)
        _check_header(path)
        recover_and_check(path, report)
    try:
        conn = connect_sync(path)
    except sqlite3.Error as exc:
        raise PreflightError(f"cannot open {path}: {exc}") from exc
    try:
        before = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if before > SCHEMA_VERSION:
            raise PreflightError(_too_new(path, before))
        if 0 < before < SCHEMA_VERSION and before_migration is not None:
            before_migration(before)
        after = migrate_sync(conn)
    except NewerSchema as exc:
        raise PreflightError(exc.message) from exc
    except sqlite3.DatabaseError as exc:
        raise _corrupt(path, str(exc)) from exc
    finally:
        conn.close()
    if before == 0:
        report.say(f"database: created {path} (schema version {after})")
    elif after != before:
        report.say(f"database: migrated schema {before} -> {after}")
    else:
        report.say(f"database: schema version {after}")


def database_problem(settings: Settings, *, quick: bool = False) -> str | None:
    """One line naming what stops the server from opening its database, else None.

    Read-only and cheap (header, schema, version; ``quick`` adds ``PRAGMA
    quick_check``), so ``serve`` can call it before uvicorn starts: the
    lifespan's own failure only reaches logs/system.log. A missing file is
    fine (the server creates it); a locked one is left to the server. A
    corrupt or empty file gives start.sh's message (exit with ``EXIT_CORRUPT``).
    """
    path = settings.db_path
    try:
        if not path.is_file():
            return None
        if path.stat().st_size == 0:
            return str(_empty(path))
        _check_header(path)
        guard_stale_wal(path)
        conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=5.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")] if quick else []
        finally:
            conn.close()
    except PreflightError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        return str(_corrupt(path, str(exc)))
    if problems and problems != ["ok"]:
        return str(_corrupt(path, "; ".join(problems)[:300]))
    if version > SCHEMA_VERSION:
        return _too_new(path, version)
    return None


def _too_new(path: Path, version: int) -> str:
    """Older code never opens a database a newer Vigil migrated (docs/operations.md, Rollback)."""
    return (
        f"the database {path} has schema version {version}, newer than this Vigil "
        f"({SCHEMA_VERSION}); upgrade Vigil or restore an older snapshot "
        "('scripts/vigilctl snapshots', then 'scripts/vigilctl restore <name> --confirm')"
    )


# Migrate without the pre-migration snapshot (one run: VIGIL_MIGRATE_WITHOUT_SNAPSHOT=1
# scripts/start.sh), e.g. when the snapshot cannot be written and the operator has
# a copy of the database of their own.
SKIP_SNAPSHOT_ENV = "VIGIL_MIGRATE_WITHOUT_SNAPSHOT"
_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")
PRE_MIGRATION = "pre-migration"


def skip_snapshot_requested(environ: Mapping[str, str]) -> bool:
    """Is ``VIGIL_MIGRATE_WITHOUT_SNAPSHOT`` set (1/true/yes)? A bad value is an error."""
    value = environ.get(SKIP_SNAPSHOT_ENV, "").strip().lower()
    if value not in _YES + _NO:
        raise PreflightError(
            f"{SKIP_SNAPSHOT_ENV}={environ[SKIP_SNAPSHOT_ENV]!r} is not valid; use 1 or 0"
        )
    return value in _YES


def _take_snapshot(settings: Settings, name: str, kind: str) -> Any:
    """The regular backup, recorded in ``backup_runs`` (trigger pre-migration) where
    this Vigil records backup runs (``core.backups.runs``) and the old schema has the
    table; a plain one otherwise (the table arrives with a migration, not before)."""
    try:
        runs: Any = importlib.import_module("core.backups.runs")
    except ImportError:
        runs = None
    if runs is not None and _has_table(settings.db_path, "backup_runs"):
        return runs.take_backup(settings, trigger=PRE_MIGRATION, kind=kind, name=name)
    from core.backups.backup import create_backup

    return create_backup(settings.db_path, settings.backups_dir, name=name, kind=kind)


def _has_table(path: Path, table: str) -> bool:
    conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=5.0)
    try:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    finally:
        conn.close()
    return row is not None


def pre_migration_snapshot(
    settings: Settings, version: int, report: Report, *, skip: bool = False
) -> None:
    """A verified snapshot of the database at ``version`` before it is migrated.

    Taken with the regular backup (online copy, integrity check, checksum,
    read back), kept like a manual snapshot (automatic pruning never removes
    it). A failure blocks the migration with one line, unless ``skip``.
    """
    change = f"schema {version} -> {SCHEMA_VERSION}"
    if skip:
        report.say(f"database: no snapshot before migrating {change} ({SKIP_SNAPSHOT_ENV}=1)")
        return
    from core.backups import backup as backups
    from core.errors import VigilError

    kind = PRE_MIGRATION if PRE_MIGRATION in backups.KINDS else "manual"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{PRE_MIGRATION}-v{version}-{stamp}"
    try:
        snapshot = _take_snapshot(settings, name, kind)
        backups.verify_snapshot(snapshot)  # read back once more: the rollback depends on it
    except (VigilError, OSError, sqlite3.Error) as exc:
        reason = exc.message if isinstance(exc, VigilError) else str(exc)
        raise PreflightError(
            f"the snapshot before migrating {change} failed ({reason}); the database was "
            f"not migrated. Fix the cause (backups go to {settings.backups_dir}) or run "
            f"once with {SKIP_SNAPSHOT_ENV}=1 to migrate without a snapshot"
        ) from None
    report.say(
        f"database: snapshot {snapshot.name} taken and verified before migrating {change} "
        f"({snapshot.path})"
    )
    report.say(
        "database: to roll back: scripts/stop.sh, check out the previous version, "
        f"scripts/vigilctl restore {snapshot.name} --confirm, scripts/start.sh"
    )


def check_port(host: str, port: int) -> None:
    """Refuse early when something else listens on the port (the server would crash-loop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PreflightError(
                f"cannot listen on {host}:{port}: {exc.strerror}; another program uses the "
                "port (choose another with VIGIL_PORT) or an old Vigil still runs"
            ) from exc


def run_preflight(settings: Settings, environ: Mapping[str, str] | None = None) -> Report:
    """All start-up checks; raises PreflightError on the first failure."""
    report = Report()
    skip = skip_snapshot_requested(os.environ if environ is None else environ)
    report.say(telegram_state(settings))
    check_port(settings.host, settings.port)
    check_database(
        settings.db_path,
        report,
        before_migration=lambda version: pre_migration_snapshot(
            settings, version, report, skip=skip
        ),
    )
    tasks_db = settings.tasks_db_path
    if tasks_db.exists() and tasks_db.stat().st_size > 0:
        _check_header(tasks_db)
        recover_and_check(tasks_db, Report())
        report.say("task queue: data/tasks.db ok")
    return report


def already_running(settings: Settings) -> str | None:
    """ "Vigil is already running (pid N, started from DIR)" while a supervisor holds the lock."""
    pid = running_supervisor(settings.data_dir)
    if pid is None:
        return None
    return f"Vigil is already running (pid {pid}, started from {started_from(pid)})"


def release_locks(settings: Settings) -> list[str]:
    """After every process is gone: checkpoint so no stale ``-wal`` stays behind.

    Nothing is touched while a supervisor holds the lock: its database is live.
    """
    done: list[str] = []
    if running_supervisor(settings.data_dir) is not None:
        return done
    for path in (settings.db_path, settings.tasks_db_path):
        guard_stale_wal(path)
        if not Path(f"{path}-wal").exists():
            continue
        try:
            conn = sqlite3.connect(path, timeout=2.0, isolation_level=None)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            done.append(path.name)
        except sqlite3.Error:
            continue  # a damaged file is start.sh's business, not stop.sh's
    return done


def register(cli: typer.Typer, settings_or_exit: Callable[[], Settings]) -> None:
    """Hidden commands used by start.sh and stop.sh."""

    @cli.command("preflight", hidden=True)
    def preflight() -> None:
        """Start-up checks (telegram state, stale locks, integrity, schema)."""
        settings = settings_or_exit()
        from core.permissions import EXIT_CONFIG, storage_problem

        unwritable = storage_problem(settings)  # permissions first: not "corrupt ... restore"
        if unwritable:
            typer.echo(f"vigil: error: {unwritable}", err=True)
            raise typer.Exit(EXIT_CONFIG)
        # Held for the whole check, so no supervisor starts on a database being
        # recovered or migrated; a held lock is a live Vigil: nothing is touched.
        with exclusive_lock(settings.data_dir / SUPERVISOR_LOCK_NAME) as free:
            if not free:
                running = already_running(settings) or (
                    "Vigil is already running (its supervisor holds the lock)"
                )
                typer.echo(f"vigil: error: {running}; nothing was checked or changed", err=True)
                raise typer.Exit(EXIT_FAILED)
            try:
                report = run_preflight(settings)
            except PreflightError as exc:
                typer.echo(f"vigil: error: {exc}", err=True)
                raise typer.Exit(exc.exit_code) from None
        for line in report.lines:
            typer.echo(f"vigil: {line}")

    @cli.command("supervisor-pid", hidden=True)
    def supervisor_pid() -> None:
        """The live supervisor of this data directory: "PID<tab>DIR"; exit 1 when none.

        Judged by the supervisor's lock (data/supervisor.json.lock), never by a
        PID file or a command line.
        """
        settings = settings_or_exit()
        pid = running_supervisor(settings.data_dir)
        if pid is None:
            raise typer.Exit(1)
        typer.echo(f"{pid}\t{started_from(pid)}")

    @cli.command("release-locks", hidden=True)
    def release() -> None:
        """Checkpoint stale WAL files after every Vigil process has gone."""
        for name in release_locks(settings_or_exit()):
            typer.echo(f"vigil: released {name} (WAL checkpointed)")

    @cli.command("stop-wait", hidden=True)
    def stop_wait() -> None:
        """Seconds stop.sh waits before SIGKILL: drain grace + child stop timeout + slack."""
        settings = settings_or_exit()
        typer.echo(f"{settings.restart_grace_s + settings.supervisor_stop_timeout_s + 5:g}")
