"""Verified restore of a snapshot: to a new file, or onto the live database.

Every restore first checks the snapshot's checksum, unpacks it next to the
target, and runs ``PRAGMA integrity_check`` and a schema check on the result;
only a copy that passes is renamed into place.

The live database is the configured ``system.db`` whatever path names it
(absolute, relative, a symlink, a hard link: one device/inode). Restoring
onto it needs a stopped server and ``--confirm``, and the current files
(database, ``-wal``, ``-shm``) are kept aside first, never deleted. "Stopped"
is judged on what is true now (see core/backups/file_users.py): nobody holds the
supervisor's lock (restore holds it itself while it swaps files, so no
supervisor starts meanwhile), no other process has the file open, and
nothing answers on the server's port. Any other target that some process
has open is refused too.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import counters
from core.backups import media
from core.backups.backup import (
    CHUNK,
    Progress,
    ServerRunning,
    Snapshot,
    SnapshotDamaged,
    integrity_problems,
    no_progress,
    open_readonly,
    verify_snapshot,
)
from core.backups.file_users import describe_holders, exclusive_lock, holders, same_file
from core.errors import BadRequest, StorageError, StorageFull
from core.restarts import COLUMNS as RESTART_COLUMNS
from core.schema import SCHEMA_VERSION
from core.sqlite import BUSY_TIMEOUT_S

log = logging.getLogger(__name__)


class ConfirmRequired(BadRequest):
    code = "confirm_required"


class TargetUnwritable(BadRequest):
    code = "target_unwritable"


@dataclass(frozen=True, slots=True)
class RestoreResult:
    target: Path
    snapshot: str
    messages: int
    kept_aside: list[Path]
    # Deletions (``vigilctl delete``) done after the snapshot was taken: the restored
    # copy holds that data again. ``(scope, target)``; their records are carried over.
    redo_deletions: tuple[tuple[str, str], ...] = ()
    # What happened to the images under data/media (None: not asked to restore them).
    images: media.MediaRestore | None = None


def _check_target(target: Path, *, overwrite: bool) -> None:
    parent = target.parent
    if target.is_dir():
        raise TargetUnwritable(f"cannot restore to {target}: it is a directory")
    if parent.exists() and not parent.is_dir():
        raise TargetUnwritable(f"cannot restore to {target}: {parent} is not a directory")
    if not parent.is_dir():
        raise TargetUnwritable(f"cannot restore to {target}: directory {parent} does not exist")
    if target.exists() and not overwrite:
        raise ConfirmRequired(f"{target} already exists; add --confirm to overwrite it")
    probe = parent / f".{target.name}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise TargetUnwritable(f"cannot write to {parent}: {exc.strerror or exc}") from exc


def _unpack(snapshot: Snapshot, temp: Path, progress: Progress) -> None:
    done = 0
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(snapshot.path, "rb") as gz:
            while chunk := gz.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress("restore", done, snapshot.db_bytes)
            out.flush()
            os.fsync(out.fileno())
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SnapshotDamaged(f"snapshot {snapshot.name!r} is damaged: {exc}") from exc
    except OSError as exc:
        if exc.errno == 28:
            raise StorageFull(f"restore failed: the disk is full in {temp.parent}") from exc
        raise


def _check_copy(snapshot: Snapshot, temp: Path) -> int:
    problems = integrity_problems(temp)
    if problems:
        raise SnapshotDamaged(
            f"snapshot {snapshot.name!r} failed its integrity check: {problems[0]}"
        )
    conn = open_readonly(temp)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        messages = int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error as exc:
        raise SnapshotDamaged(f"snapshot {snapshot.name!r} is not a Vigil database: {exc}") from exc
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise SnapshotDamaged(
            f"snapshot {snapshot.name!r} has schema version {version}, newer than this "
            f"Vigil ({SCHEMA_VERSION}); upgrade Vigil to restore it"
        )
    return messages


def _prepare(snapshot: Snapshot, target: Path, progress: Progress) -> tuple[Path, int]:
    """Verify and unpack next to ``target``; returns (temp file, message count)."""
    verify_snapshot(snapshot, progress=progress)
    temp = target.parent / f".{target.name}.restore-tmp"
    try:
        _unpack(snapshot, temp, progress)
        messages = _check_copy(snapshot, temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, messages


def is_live_target(target: Path, db_path: Path) -> bool:
    """Does ``target`` name the live database (same file, however it is spelled)?"""
    return same_file(target, db_path)


def refuse_companion(target: Path, db_path: Path) -> None:
    """The live database's -wal, -shm or -journal is never a restore target."""
    for suffix in ("-wal", "-shm", "-journal"):
        if same_file(target, Path(f"{db_path}{suffix}")) and Path(f"{db_path}{suffix}").exists():
            raise TargetUnwritable(
                f"cannot restore to {target}: it is the live database's {suffix[1:]} file; "
                f"restore onto {db_path} itself, or to another --target-path FILE"
            )


def _refuse_if_open(target: Path) -> None:
    pids = holders(target)
    if pids:
        raise ServerRunning(
            f"{target} is open in {describe_holders(pids)}; stop it first "
            "(a Vigil with scripts/stop.sh), or restore to another --target-path FILE"
        )


def restore_to_file(
    snapshot: Snapshot, target: Path, *, overwrite: bool = False, progress: Progress = no_progress
) -> RestoreResult:
    """Write the snapshot as a plain SQLite database at ``target`` (not the live one).

    Through a symlink the file it points to is replaced, not the link.
    """
    target = target.resolve()
    _check_target(target, overwrite=overwrite)
    _refuse_if_open(target)
    temp, messages = _prepare(snapshot, target, progress)
    try:
        _refuse_if_open(target)  # someone may have opened it while we unpacked
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    for stale in (Path(f"{target}-wal"), Path(f"{target}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(temp, target)
    log.info("restored snapshot %s to %s (%d messages)", snapshot.name, target, messages)
    return RestoreResult(target, snapshot.name, messages, [])


def _running_reason(
    db_path: Path, *, lock_free: bool, answering: Callable[[], bool] | None
) -> str | None:
    """Why the server counts as running, or None when it is stopped."""
    if not lock_free:
        return "its supervisor holds the lock"
    pids = holders(db_path)
    if pids:
        return f"{describe_holders(pids)} has the database open"
    if answering is not None and answering():
        return "it answers on its port"  # e.g. a server of this process, or on another disk
    return None


def _refuse_if_running(
    db_path: Path, *, lock_free: bool, answering: Callable[[], bool] | None
) -> None:
    reason = _running_reason(db_path, lock_free=lock_free, answering=answering)
    if reason is not None:
        raise ServerRunning(
            f"the server is running ({reason}) and {db_path} is its live database; "
            "stop it with scripts/stop.sh first, or restore to another --target-path FILE"
        )


def restore_live(
    snapshot: Snapshot,
    db_path: Path,
    *,
    confirm: bool,
    supervisor_lock: Path | None = None,
    answering: Callable[[], bool] | None = None,
    now: float | None = None,
    progress: Progress = no_progress,
    media_root: Path | None = None,
) -> RestoreResult:
    """Replace ``db_path`` with the snapshot; the server must be stopped.

    With ``media_root`` (``data/media``) the snapshot's images are written back
    before the swap, and the files the restored database does not refer to are
    moved aside after it (see core/backups/media.py).

    Running means: someone holds ``supervisor_lock`` (``data/supervisor.json.lock``),
    another process has ``db_path`` open, or ``answering()`` (a GET of
    ``/health/live``) says a server is up. The lock is held until the swap is
    done; the open-file check is repeated just before it.
    """
    db_path = db_path.resolve()  # through a symlink: the file itself is replaced
    with exclusive_lock(supervisor_lock) as lock_free:
        _refuse_if_running(db_path, lock_free=lock_free, answering=answering)
        if not confirm:
            raise ConfirmRequired(
                f"restoring {snapshot.name!r} replaces {db_path}; add --confirm to proceed "
                "(the current database is kept aside)"
            )
        if not db_path.parent.is_dir():
            raise TargetUnwritable(f"cannot restore: directory {db_path.parent} does not exist")
        _check_target(db_path, overwrite=True)
        temp, messages = _prepare(snapshot, db_path, progress)
        try:
            _refuse_if_running(db_path, lock_free=True, answering=None)
            _carry_counters(db_path, temp)
            _carry_backup_runs(db_path, temp)
            redo = _carry_deletions(db_path, temp)
            _carry_restarts(db_path, temp)
            written = _restore_images(snapshot, media_root)
            aside = _swap(temp, db_path, now=now)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        images = None
        if media_root is not None:
            images = _set_images_aside(db_path, media_root, written, now=now)
    log.warning(
        "restored snapshot %s onto %s (%d messages); previous files kept as %s",
        snapshot.name,
        db_path,
        messages,
        ", ".join(p.name for p in aside) or "nothing (no database existed)",
    )
    return RestoreResult(db_path, snapshot.name, messages, aside, redo, images)


def _stamp(now: float | None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))


def _restore_images(snapshot: Snapshot, media_root: Path | None) -> tuple[int, int]:
    """Write the snapshot's images back (before the swap: a row never lacks its file)."""
    if media_root is None or media.ROLE not in snapshot.files:
        return 0, 0
    try:
        return media.extract_images(snapshot.extra_path(media.ROLE), media_root)
    except ValueError as exc:
        raise SnapshotDamaged(f"snapshot {snapshot.name!r} is damaged: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"restore failed: the disk is full in {media_root}") from exc
        raise StorageError(
            f"restore failed while writing the images to {media_root}: {exc.strerror or exc}"
        ) from exc


def _set_images_aside(
    db_path: Path, media_root: Path, written: tuple[int, int], *, now: float | None
) -> media.MediaRestore:
    """Move the replaced database's images aside; a failure here is logged, not raised:
    the restore is done, and the orphan sweep removes what is left an hour later."""
    aside = media_root.with_name(f"{media_root.name}.before-restore-{_stamp(now)}")
    n = 1
    while aside.exists():
        aside = media_root.with_name(f"{media_root.name}.before-restore-{_stamp(now)}.{n}")
        n += 1
    try:
        moved, missing = media.set_aside_unreferenced(db_path, media_root, aside)
    except (OSError, sqlite3.Error) as exc:
        log.warning("restore: the replaced database's images were not moved aside: %s", exc)
        moved, missing = 0, 0
    if missing:
        log.warning("restore: %d image(s) of the restored database have no file", missing)
    return media.MediaRestore(
        restored=written[0],
        unchanged=written[1],
        set_aside=moved,
        missing=missing,
        aside=str(aside) if moved else "",
    )


def _carry_counters(db_path: Path, temp: Path) -> None:
    """The restored copy's counters are raised to the current ones (they never go back)."""
    if not db_path.exists():
        return
    try:
        current = open_readonly(db_path)
        try:
            previous = counters.read_all_sync(current)
        finally:
            current.close()
        restored = sqlite3.connect(temp, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            restored.execute("BEGIN IMMEDIATE")
            raised = counters.carry_forward_sync(restored, previous)
            restored.execute("COMMIT")
        finally:
            restored.close()
    except sqlite3.Error as exc:  # e.g. a snapshot older than the counters table
        log.warning("counters not carried over to the restored database: %s", exc)
        return
    log.info("restore: %d counter(s) carried over from the replaced database", raised)


BACKUP_RUN_COLUMNS = "started_at, finished_at, ok, trigger, path, size_bytes, error"
DELETION_COLUMNS = "deleted_at, deleted_by, scope, target, messages, files"


def _carry_newer_rows(
    db_path: Path,
    temp: Path,
    *,
    table: str,
    columns: str,
    at: str,
    what: str,
    restored_newest: str | None = None,
    before_insert: str | None = None,
) -> list[tuple[Any, ...]] | None:
    """Copy the rows of ``table`` newer (by ``at``) than the restored copy's newest
    from the replaced database into the restored copy, in one transaction.

    History is not data: who deleted what, the restarts and the backups that
    happened after the snapshot stay true after a restore. Returns the rows
    copied, or None when they could not be (logged; e.g. a snapshot older than
    the table).
    """
    if not db_path.exists():
        return []
    try:
        restored = sqlite3.connect(temp, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            newest = restored.execute(
                restored_newest or f"SELECT max({at}) FROM {table}"
            ).fetchone()[0]
            current = open_readonly(db_path)
            try:
                rows = current.execute(
                    f"SELECT {columns} FROM {table} WHERE {at} > ? ORDER BY id",
                    (-1.0 if newest is None else float(newest),),
                ).fetchall()
            finally:
                current.close()
            restored.execute("BEGIN IMMEDIATE")
            if rows and before_insert:
                restored.execute(before_insert)
            marks = ", ".join("?" * len(columns.split(",")))
            restored.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
            restored.execute("COMMIT")
        finally:
            restored.close()
    except sqlite3.Error as exc:
        log.warning("%s not carried over to the restored database: %s", what, exc)
        return None
    if rows:
        log.info(
            "restore: %d row(s) of %s carried over from the replaced database", len(rows), what
        )
    return [tuple(r) for r in rows]


def _carry_backup_runs(db_path: Path, temp: Path) -> None:
    """The replaced database's backup history newer than the snapshot's is kept.

    A snapshot is copied before its own ``backup_runs`` row is finished, so a
    restored database knew of no backup at all ("never": no stale alert, no
    ``vigil_backup_last_success_timestamp_seconds``) although its snapshots exist.
    Its unfinished rows (the very backup that made it) give way to the replaced
    database's finished ones.
    """
    _carry_newer_rows(
        db_path,
        temp,
        table="backup_runs",
        columns=BACKUP_RUN_COLUMNS,
        at="started_at",
        what="backup history",
        restored_newest="SELECT max(started_at) FROM backup_runs WHERE finished_at IS NOT NULL",
        before_insert="DELETE FROM backup_runs WHERE finished_at IS NULL",
    )


def _carry_deletions(db_path: Path, temp: Path) -> tuple[tuple[str, str], ...]:
    """The deletions recorded after the snapshot: carried over (the record of who
    deleted what and when stays) and returned, as the restored copy holds that
    data again until they are run again."""
    rows = _carry_newer_rows(
        db_path,
        temp,
        table="deletions",
        columns=DELETION_COLUMNS,
        at="deleted_at",
        what="deletion records",
    )
    redo = tuple(dict.fromkeys((str(r[2]), str(r[3])) for r in rows or ()))
    if redo:
        log.warning(
            "restore: the snapshot predates %d deletion(s); the restored database holds "
            "their data again: %s",
            len(redo),
            ", ".join(f"{scope} {target}" for scope, target in redo),
        )
    return redo


def _carry_restarts(db_path: Path, temp: Path) -> None:
    """The restart history newer than the snapshot's is kept: the stop right before
    a restore (and any restart since the snapshot) stays in ``status``."""
    _carry_newer_rows(
        db_path,
        temp,
        table="restarts",
        columns=", ".join(RESTART_COLUMNS),
        at="at",
        what="restart history",
    )


def _swap(temp: Path, db_path: Path, *, now: float | None) -> list[Path]:
    """Keep the current database, -wal and -shm aside, then rename ``temp`` into place.

    The kept files stay a set (``X.before-restore-T``, ``X.before-restore-T-wal``):
    opening the kept database reads its WAL, so no committed row is left out.
    """
    stamp = _stamp(now)
    kept = _free_set(db_path.with_name(f"{db_path.name}.before-restore-{stamp}"))
    aside: list[Path] = []
    try:
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db_path}{suffix}")
            if path.exists():
                moved = Path(f"{kept}{suffix}")
                os.replace(path, moved)
                aside.append(moved)
        os.replace(temp, db_path)
    except OSError as exc:
        raise StorageError(f"restore failed while swapping files: {exc}") from exc
    return aside


def _free_set(path: Path) -> Path:
    """``path``, or ``path.N``, such that none of it, its -wal or -shm exists yet."""
    candidate, n = path, 1
    while any(Path(f"{candidate}{s}").exists() for s in ("", "-wal", "-shm")):
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate
