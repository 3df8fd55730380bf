"""``validate``: is the database whole, its search index in sync, its files private?

Each check returns a :class:`Check` (ok / warn / fail). Everything here reads
only, except FTS5's own ``integrity-check`` command, which needs the write
lock: it runs only when ``full_fts`` is asked for (the CLI asks when the
server is stopped). With the server running, the index is compared with the
messages table row by row through the index's ``docsize`` table instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.backups.backup import (
    DATA_SUFFIX,
    MANIFEST_SUFFIX,
    SnapshotDamaged,
    backup_dir_problem,
    integrity_problems,
    list_snapshots,
    readonly_uri,
    verify_snapshot,
)
from core.backups.media import SUFFIX as MEDIA_SUFFIX
from core.backups.state import read_backup_state
from core.backups.temp import find_leftovers
from core.config import Settings
from core.database import BUSY_TIMEOUT_S, guard_stale_wal
from core.media import MEDIA_DIR
from core.schema import SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str

    @property
    def is_ok(self) -> bool:
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open_ro(path: Path) -> sqlite3.Connection:
    guard_stale_wal(path)
    return sqlite3.connect(readonly_uri(path), uri=True, timeout=BUSY_TIMEOUT_S)


def check_integrity(path: Path) -> Check:
    problems = integrity_problems(path)
    if not problems:
        return Check("integrity", "ok", "PRAGMA integrity_check: ok")
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return Check("integrity", "fail", f"{problems[0]}{more}")


def check_schema(conn: sqlite3.Connection) -> Check:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == SCHEMA_VERSION:
        return Check("schema", "ok", f"schema version {version}")
    status = "warn" if version < SCHEMA_VERSION else "fail"
    return Check("schema", status, f"schema version {version}, this Vigil expects {SCHEMA_VERSION}")


def check_fts_rows(conn: sqlite3.Connection) -> Check:
    """Read-only: every message indexed once, nothing indexed that is gone."""
    missing = conn.execute(
        "SELECT count(*) FROM (SELECT id FROM messages EXCEPT SELECT id FROM messages_fts_docsize)"
    ).fetchone()[0]
    stale = conn.execute(
        "SELECT count(*) FROM (SELECT id FROM messages_fts_docsize EXCEPT SELECT id FROM messages)"
    ).fetchone()[0]
    if missing or stale:
        return Check(
            "fts",
            "fail",
            f"search index out of sync: {missing} message(s) not indexed, {stale} stale "
            "entr(ies); repair with `validate --repair-fts`",
        )
    return Check("fts", "ok", "search index covers every message")


def check_fts_full(path: Path) -> Check:
    """FTS5's own check of the index against the messages (takes the write lock)."""
    guard_stale_wal(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return Check(
            "fts_content",
            "fail",
            f"search index does not match the messages ({exc}); "
            "repair with `validate --repair-fts`",
        )
    finally:
        conn.close()
    return Check("fts_content", "ok", "FTS5 integrity-check: ok")


def check_orphans(conn: sqlite3.Connection) -> Check:
    orphans = conn.execute(
        "SELECT count(*) FROM messages m"
        " WHERE NOT EXISTS (SELECT 1 FROM chats c WHERE c.id = m.chat_id)"
    ).fetchone()[0]
    drift = conn.execute(
        "SELECT count(*) FROM chats c WHERE c.message_count !="
        " (SELECT count(*) FROM messages m WHERE m.chat_id = c.id)"
    ).fetchone()[0]
    if orphans:
        return Check("orphans", "fail", f"{orphans} message(s) belong to no chat")
    if drift:
        return Check("orphans", "warn", f"{drift} chat(s) have a stale message_count")
    return Check("orphans", "ok", "no orphan rows")


def _mode_problem(path: Path, allowed: int) -> str | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & ~allowed:
        return f"{path} is {mode:04o} (expected {allowed:04o} or stricter)"
    return None


def check_permissions(paths: list[tuple[Path, int]]) -> Check:
    """Files must not be readable by group/others (chat content, secrets)."""
    problems = [p for p in (_mode_problem(path, mode) for path, mode in paths) if p]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("permissions", "fail", problems[0] + more + "; fix with chmod")
    return Check("permissions", "ok", "data files are private")


def private_paths(
    data_dir: Path, db_path: Path, logs_dir: Path, backups_dir: Path | None = None
) -> list[tuple[Path, int]]:
    """The files validate inspects (stat only: the Telegram session is never opened)."""
    paths: list[tuple[Path, int]] = [(data_dir, 0o700), (logs_dir, 0o700)]
    for name in (db_path.name, f"{db_path.name}-wal", f"{db_path.name}-shm", "telegram.session"):
        paths.append((db_path.parent / name, 0o600))
    paths.append((data_dir / "admin_token", 0o600))
    media = data_dir / MEDIA_DIR  # the images sent with messages
    if media.is_dir():
        paths.append((media, 0o700))
        for path in sorted(media.rglob("*")):
            paths.append((path, 0o700 if path.is_dir() else 0o600))
    backups = data_dir / "backups" if backups_dir is None else backups_dir
    if backups.is_dir():
        paths.append((backups, 0o700))
        paths.extend((p, 0o600) for p in sorted(backups.iterdir()) if p.is_file())
        for images in sorted(backups.glob("*" + MEDIA_SUFFIX)):  # snapshots' image directories
            paths.append((images, 0o700))
            paths.extend((p, 0o700 if p.is_dir() else 0o600) for p in sorted(images.rglob("*")))
    return paths


def validate_database(
    path: Path,
    *,
    full_fts: bool = True,
    permissions: list[tuple[Path, int]] | None = None,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check on ``path``; a check that cannot run is itself a failure."""
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    if not path.is_file():
        add(Check("database", "fail", f"no database file at {path}"))
        return checks
    if path.stat().st_size == 0:
        add(
            Check(
                "database",
                "fail",
                f"{path} is empty (0 bytes), not a Vigil database: a failed copy may have "
                "left it; restore a snapshot (`restore <name> --confirm`) or, on a new "
                "install, remove it",
            )
        )
        return checks
    add(check_integrity(path))
    try:
        conn = _open_ro(path)
        try:
            for step in (check_schema, check_fts_rows, check_orphans):
                add(step(conn))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        add(Check("tables", "fail", f"cannot read the tables: {exc}"))
    if full_fts and all(c.is_ok for c in checks):
        add(check_fts_full(path))
    if permissions is not None:
        add(check_permissions(permissions))
    return checks


def check_latest_backup(backups_dir: Path, *, now: float, max_age_s: float = 26 * 3600) -> Check:
    """The newest snapshot must read back whole; an old or missing one is a warning."""
    snapshots = list_snapshots(backups_dir)
    if not snapshots:
        return Check("backups", "warn", f"no snapshots in {backups_dir} yet")
    latest = snapshots[0]
    try:
        verify_snapshot(latest)
    except SnapshotDamaged as exc:
        return Check("backups", "fail", exc.message)
    age_h = (now - latest.created_at) / 3600
    if now - latest.created_at > max_age_s:
        return Check("backups", "warn", f"latest snapshot {latest.name} is {age_h:.0f} h old")
    return Check("backups", "ok", f"latest snapshot {latest.name} ({age_h:.1f} h old) verified")


def check_snapshot_files(backups_dir: Path, *, now: float, settle_s: float = 3600.0) -> Check:
    """Every snapshot is a matching ``NAME.db.gz`` + ``NAME.json`` pair.

    Flags manifests that record another name (renamed or copied by hand: the
    file name is what counts), manifests without data, data without a manifest
    (a half-removed snapshot; younger ones may be a backup still running, so
    they get ``settle_s``), and manifests that cannot be read.
    """
    if not backups_dir.is_dir():
        return Check("snapshot_files", "ok", "no snapshots yet")
    listed = {s.name: s for s in list_snapshots(backups_dir)}
    problems: list[str] = []
    for snap in listed.values():
        if snap.renamed:
            problems.append(
                f"{snap.manifest_path.name} records the name {snap.manifest_name!r} "
                f"(renamed or copied?); it is listed as {snap.name!r}"
            )
        if not snap.path.exists():
            problems.append(f"{snap.manifest_path.name} has no {snap.path.name}")
    for manifest in sorted(backups_dir.glob("*" + MANIFEST_SUFFIX)):
        if manifest.name.removesuffix(MANIFEST_SUFFIX) not in listed:
            problems.append(f"{manifest.name} is unreadable or badly named; it is ignored")
    for data in sorted(backups_dir.glob("*" + DATA_SUFFIX)):
        if data.name.removesuffix(DATA_SUFFIX) in listed:
            continue
        with contextlib.suppress(OSError):
            if now - data.stat().st_mtime > settle_s:
                problems.append(f"{data.name} has no manifest (not a complete snapshot)")
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("snapshot_files", "warn", problems[0] + more)
    return Check("snapshot_files", "ok", f"{len(listed)} snapshot(s), each a matching pair")


def check_backup_temp(backups_dir: Path) -> Check:
    """Temp files that interrupted backups left behind (a killed one cannot clean up)."""
    found = find_leftovers(backups_dir)
    if not found.paths:
        return Check("backup_temp", "ok", "no temp files of interrupted backups")
    names = ", ".join(p.name for p in found.paths[:3]) + (" ..." if len(found.paths) > 3 else "")
    return Check(
        "backup_temp",
        "warn",
        f"{len(found.paths)} temp file(s) of interrupted backups, {found.size_bytes / 1e6:.1f} MB "
        f"({names}); the next backup or `cleanup` removes them",
    )


def repair_fts(path: Path) -> None:
    """Rebuild the full-text index from the messages table."""
    guard_stale_wal(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("INSERT INTO messages_fts(messages_fts) VALUES('rebuild')")
    finally:
        conn.close()


def check_backup_runs(settings: Settings, *, now: float) -> Check:
    """The backups' record (``backup_runs``) and the backup directory.

    Fails (exit 1, like ``/health`` degraded) when the newest attempt failed,
    the last success is older than twice the backup period, or the backup
    directory cannot be written; warns when no backup ran yet or the schedule
    is off.
    """
    problem = backup_dir_problem(settings.backups_dir, create=False)
    if problem is not None and settings.backups_dir.exists():
        return Check("backup_runs", "fail", problem)
    try:
        conn = _open_ro(settings.db_path)
        try:
            state = read_backup_state(conn, settings, now)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):  # a database not yet migrated to this Vigil
            return Check("backup_runs", "warn", "no backup record yet (the server adds it)")
        return Check("backup_runs", "fail", f"cannot read the backup record: {exc}")
    if state.reason is not None:
        return Check("backup_runs", "fail", f"{state.reason}: {state.message()}")
    if state.status in ("never", "disabled"):
        return Check("backup_runs", "warn", state.message())
    return Check("backup_runs", "ok", state.message())
