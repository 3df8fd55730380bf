"""Verified restore of a snapshot: to a new file, or onto the live database.

Every restore first checks the snapshot's checksum, unpacks it next to the
target, and runs ``PRAGMA integrity_check`` and a schema check on the result;
only a copy that passes is renamed into place. Onto the live database the
server must be stopped (``data/vigil.pid`` names no live Vigil process) and
the operator must confirm; the current files are kept aside first, never
deleted.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.backup import (
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
from core.errors import BadRequest, StorageError, StorageFull
from core.restarts import pid_alive
from core.schema import SCHEMA_VERSION

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


def server_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` if that process is alive and is Vigil's."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    if not pid_alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        # A recycled PID that now belongs to some other program is not a server.
        if b"main.py" not in cmdline.read_bytes() and b"vigil" not in cmdline.read_bytes():
            return None
    return pid


def _free_name(path: Path) -> Path:
    """``path``, or ``path.N`` if taken: a kept-aside file is never overwritten."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


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


def restore_to_file(
    snapshot: Snapshot, target: Path, *, overwrite: bool = False, progress: Progress = no_progress
) -> RestoreResult:
    """Write the snapshot as a plain SQLite database at ``target``."""
    _check_target(target, overwrite=overwrite)
    temp, messages = _prepare(snapshot, target, progress)
    for stale in (Path(f"{target}-wal"), Path(f"{target}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(temp, target)
    log.info("restored snapshot %s to %s (%d messages)", snapshot.name, target, messages)
    return RestoreResult(target, snapshot.name, messages, [])


def restore_live(
    snapshot: Snapshot,
    db_path: Path,
    *,
    pid_file: Path,
    confirm: bool,
    answering: Callable[[], bool] | None = None,
    now: float | None = None,
    progress: Progress = no_progress,
) -> RestoreResult:
    """Replace ``db_path`` with the snapshot; the server must be stopped.

    Running means: ``pid_file`` names a live Vigil process, or ``answering()``
    (e.g. a GET of ``/health/live``) says a server without a PID file is up.
    """
    pid = server_pid(pid_file)
    if pid is None and answering is not None and answering():
        pid = 0  # no PID file (e.g. `python main.py serve` by hand) but it answers
    if pid is not None:
        which = f"pid {pid}" if pid else "it answers on its port"
        raise ServerRunning(
            f"the server is running ({which}); stop it with scripts/stop.sh before "
            "restoring onto the live database, or use --target-path FILE"
        )
    if not confirm:
        raise ConfirmRequired(
            f"restoring {snapshot.name!r} replaces {db_path}; add --confirm to proceed "
            "(the current database is kept aside)"
        )
    if not db_path.parent.is_dir():
        raise TargetUnwritable(f"cannot restore: directory {db_path.parent} does not exist")
    _check_target(db_path, overwrite=True)
    temp, messages = _prepare(snapshot, db_path, progress)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    aside: list[Path] = []
    try:
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            if path.exists():
                # Kept byte for byte (WAL included): the operator may still need it.
                moved = _free_name(path.with_name(f"{path.name}.before-restore-{stamp}"))
                os.replace(path, moved)
                aside.append(moved)
        os.replace(temp, db_path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StorageError(f"restore failed while swapping files: {exc}") from exc
    log.warning(
        "restored snapshot %s onto %s (%d messages); previous files kept as %s",
        snapshot.name,
        db_path,
        messages,
        ", ".join(p.name for p in aside) or "nothing (no database existed)",
    )
    return RestoreResult(db_path, snapshot.name, messages, aside)
