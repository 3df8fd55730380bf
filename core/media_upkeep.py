"""The life cycle of stored images: retention, the orphan sweep, their figures.

An image file is written before its ``message_images`` row commits and
removed only after the row is gone (a deleted chat, messages past
retention), so every committed row has its file and a crash can only leave a
file without a row. The sweep removes such files once they are older than
``ORPHAN_AGE_S`` (a turn takes milliseconds from the write to the commit, so
a younger file may still be about to get its row). Rows whose file is gone
(removed by hand, a snapshot taken while the chat was deleted) are counted
and logged, never "repaired": the prompt shows them as ``[image: caption]``.

Plain functions of one sqlite3 connection, like ``core/maintenance.py``: the
Huey worker and the CLI call the same ones.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import maintenance
from core.media import MediaStore

log = logging.getLogger(__name__)

ORPHAN_AGE_S = 3600.0
# What MediaStore.save leaves: ``<folder>/<id>.jpg``, and ``<id>.part`` while writing.
SUFFIXES = (".jpg", ".part")


def referenced_paths(conn: sqlite3.Connection) -> set[str]:
    """Every image path the database refers to (none before schema 7)."""
    try:
        cursor = conn.execute("SELECT path FROM message_images")
        try:
            return {str(r[0]) for r in cursor.fetchall()}
        finally:
            cursor.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return set()
        raise


def stored_files(root: Path) -> dict[str, os.stat_result]:
    """The image files (and half-written ``.part`` files) under ``root``: path -> stat."""
    found: dict[str, os.stat_result] = {}
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        if path.suffix not in SUFFIXES:
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:  # removed meanwhile
            continue
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(root).as_posix()] = info
    return found


@dataclass(frozen=True, slots=True)
class OrphanSweep:
    """What one sweep found and did."""

    removed: int  # files without a row, older than the age limit
    removed_bytes: int
    young: int  # files without a row yet, too young to judge
    missing: int  # rows whose file is gone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_orphans(
    conn: sqlite3.Connection,
    store: MediaStore,
    *,
    now: float | None = None,
    min_age_s: float = ORPHAN_AGE_S,
) -> OrphanSweep:
    """Remove image files that no row refers to and that are older than ``min_age_s``."""
    now = time.time() if now is None else now
    # Files first, rows second: a file whose row commits in between is then seen as
    # referenced, never as an orphan.
    files = stored_files(store.root)
    refs = referenced_paths(conn)
    removed = removed_bytes = young = 0
    for relative, info in files.items():
        if relative in refs:
            continue
        if now - info.st_mtime < min_age_s:
            young += 1
            continue
        if store.remove([relative]):
            removed += 1
            removed_bytes += info.st_size
    missing = [r for r in refs if r not in files and store.read(r) is None]
    if removed:
        log.warning(
            "media: removed %d image file(s) no message refers to (%.1f MB; left by a "
            "crash between the write and the commit)",
            removed,
            removed_bytes / 1e6,
        )
    if missing:
        log.warning(
            "media: %d stored image(s) have no file (e.g. %s); they are shown as text",
            len(missing),
            sorted(missing)[0],
        )
    return OrphanSweep(removed, removed_bytes, young, len(missing))


def delete_old_messages(
    conn: sqlite3.Connection, store: MediaStore, *, days: int, now: float | None = None
) -> dict[str, int]:
    """Message retention with the images: the rows (images cascade), then their files."""
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    try:
        cursor = conn.execute(
            "SELECT i.path FROM message_images i JOIN messages m ON m.id = i.message_id"
            " WHERE m.created_at < ?",
            (cutoff,),
        )
        try:
            paths = {str(r[0]) for r in cursor.fetchall()}
        finally:
            cursor.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        paths = set()
    deleted = maintenance.delete_old_messages(conn, days=days, now=now)
    # Only what no row refers to any more (committed: the batches commit one by one).
    gone = sorted(paths - referenced_paths(conn)) if paths else []
    removed = store.remove(gone)
    if removed:
        log.info("message retention: removed %d image file(s)", removed)
    return {"deleted": deleted, "images_removed": removed}


def media_figures(conn: sqlite3.Connection) -> dict[str, int]:
    """Stored images and their bytes, as the rows record them (cheap: no disk walk)."""
    try:
        cursor = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM message_images")
        try:
            files, size = cursor.fetchone()
        finally:
            cursor.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        files, size = 0, 0
    return {"files": int(files), "bytes": int(size)}
