"""Plain sqlite3 connections with Vigil's pragmas, migrations, WAL ownership.

No event loop: tools, backups, the worker and the supervisor's restart
records use these directly; :class:`core.database.Database` builds on them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from core.errors import StorageError
from core.files import write_private
from core.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-16000",
)
BUSY_TIMEOUT_S = 5.0


class NewerSchema(StorageError):
    code = "schema_too_new"


def prepare_file(path: Path) -> None:
    """Create the data dir (0700) and an empty db file (0600) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def connect_sync(path: Path, *, readonly: bool = False, create: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection with Vigil's pragmas (tools, backups, tests).

    ``create=False`` opens an existing file only (``mode=rw``): the worker and
    the supervisor's records must never create an empty database where the
    real one went missing. A missing file raises ``sqlite3.OperationalError``.
    """
    guard_stale_wal(Path(path))
    if readonly or not create:
        # as_uri() percent-encodes '#', '?' and spaces in the path
        mode = "ro" if readonly else "rw"
        uri = Path(path).resolve().as_uri() + f"?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    else:
        prepare_file(path)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS:
        if readonly and "journal_mode" in pragma:
            continue
        conn.execute(pragma).close()
    return conn


def migrate_sync(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Apply pending migrations up to ``target``; returns the version reached."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise NewerSchema(
            f"database schema version {version} is newer than this Vigil ({SCHEMA_VERSION}); "
            "upgrade Vigil or restore an older snapshot ('scripts/vigilctl snapshots', "
            "then 'scripts/vigilctl restore <name> --confirm')",
            version=version,
        )
    for number in range(version + 1, target + 1):
        script = MIGRATIONS[number - 1]
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.OperationalError:
            # Another process (the server and the worker start together) may
            # have applied it between our version read and our BEGIN.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= number:
                continue
            raise
        log.info("database migrated to schema version %d", number)
    return max(version, target)


def owner_file(path: Path) -> Path:
    """Which file the ``-wal``/``-shm`` next to ``path`` belong to (written by the server)."""
    return path.with_name(path.name + ".owner")


def record_owner(path: Path) -> None:
    """The server, after opening ``path``: its WAL and SHM belong to this very file."""
    dev, ino = file_identity(path)
    target = owner_file(path)
    record = json.dumps({"dev": dev, "ino": ino})
    write_private(target, record, tmp=target.with_name(target.name + ".tmp"), sync=False)


def guard_stale_wal(path: Path) -> list[Path]:
    """Before opening ``path``: move aside a ``-wal``/``-shm`` that belong to another file.

    When ``system.db`` was replaced or deleted (by hand, under a running or a
    killed server), the ``-wal`` and ``-shm`` at the path are the old file's.
    SQLite would apply the old file's pages to the new one on the next open:
    a silently reverted or corrupt database. The owner record written by the
    server says which file they belong to; on a mismatch they are renamed
    ``*.stale-<time>`` (kept, never deleted) before anything opens the path.
    """
    try:
        owner = json.loads(owner_file(path).read_text(encoding="utf-8"))
        recorded = (int(owner["dev"]), int(owner["ino"]))
    except (OSError, ValueError, KeyError, TypeError):
        return []  # no record (a first start, an older Vigil): nothing to judge by
    try:
        current: tuple[int, int] | None = file_identity(path)
    except FileNotFoundError:
        current = None
    except OSError:
        return []
    if current == recorded:
        return []
    # Under a lock, judged again, and the record updated at once: the next
    # -wal/-shm created at the path belong to the current file, and a second
    # opener racing this one must not take them for the old file's.
    try:
        fd = os.open(f"{owner_file(path)}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return move_wal_aside(path, "stale")  # a read-only data dir: nobody writes a WAL
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            owner = json.loads(owner_file(path).read_text(encoding="utf-8"))
            recorded = (int(owner["dev"]), int(owner["ino"]))
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if current == recorded:
            return []  # another opener judged it first
        moved = move_wal_aside(path, "stale")
        if current is not None:
            try:
                record_owner(path)
            except OSError as exc:
                log.warning("could not record the owner of %s: %s", path, exc)
        return moved
    finally:
        os.close(fd)


def move_wal_aside(
    path: Path, label: str, *, only: set[tuple[int, int]] | None = None
) -> list[Path]:
    """Rename ``path``'s ``-wal``/``-shm`` to ``*.<label>-<time>`` (kept, never deleted).

    ``only``: move a file only if its (device, inode) is in the set.
    """
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            st = os.stat(side)
        except OSError:
            continue
        if only is not None and (st.st_dev, st.st_ino) not in only:
            continue
        target = side.with_name(f"{side.name}.{label}-{stamp}")
        try:
            os.replace(side, target)
        except OSError as exc:
            log.warning("could not move %s aside: %s", side, exc)
            continue
        log.warning(
            "%s belongs to the file that was at %s before it was replaced; kept aside as %s",
            side.name,
            path,
            target.name,
        )
        moved.append(target)
    return moved


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of ``path``, following symlinks: "the same file"."""
    st = os.stat(path)
    return st.st_dev, st.st_ino
