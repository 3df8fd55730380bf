"""The images of a snapshot: archived with it, checked, put back on restore.

A snapshot holds the image files its own database copy refers to (the
``message_images`` rows of the copy, taken inside the copy's read
transaction), not every file under ``data/media``: a row in the snapshot has
its file, and a file no row refers to (an orphan) is not kept. They go into
one uncompressed tar, ``NAME.media.tar`` (JPEGs do not compress), listed in
the manifest's ``files`` as ``media`` with its sha256, the number of images
and their bytes. A file removed between the copy and the archive (a chat
deleted meanwhile) is recorded as ``missing``; the restored database shows
such an image as text.

On restore the snapshot's images are written back (0600 files, 0700
directories, each one fsynced and renamed into place) *before* the database
is swapped, and afterwards every file the restored database does not refer to
is moved to ``data/media.before-restore-<UTC time>/``, next to the kept-aside
database it belongs to. Snapshots made before images existed have no
``media`` entry: their restore keeps the current files the restored rows
refer to and moves the rest aside the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.media import MediaStore
from core.media_upkeep import referenced_paths, stored_files

log = logging.getLogger(__name__)

ROLE = "media"
SUFFIX = ".media.tar"
# Member names are what MediaStore.save writes; anything else in an archive is refused.
_MEMBER_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}/[0-9A-Za-z_-]{1,64}\.jpg$")
CHUNK = 1 << 20


class _Hashing:
    """A write-only file that hashes and counts what passes through (for tarfile's stream)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _rows(db_copy: Path) -> list[str]:
    conn = sqlite3.connect(db_copy.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return sorted(referenced_paths(conn))
    finally:
        conn.close()


def write_archive(db_copy: Path, media_root: Path, target: Path) -> dict[str, Any]:
    """Archive the images ``db_copy`` refers to into ``target`` (0600, fsynced).

    Returns the manifest entry, without ``file`` (the caller renames the temp file).
    """
    store = MediaStore(media_root)
    images = image_bytes = 0
    missing: list[str] = []
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw:
        hashing = _Hashing(raw)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for relative in _rows(db_copy):
                try:
                    path = store.path_of(relative)
                    handle = path.open("rb")
                except (OSError, ValueError):
                    missing.append(relative)
                    continue
                with handle:
                    info = tar.gettarinfo(fileobj=handle, arcname=relative)
                    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                    tar.addfile(info, handle)
                images += 1
                image_bytes += info.size
        raw.flush()
        os.fsync(raw.fileno())
    if missing:
        log.warning(
            "backup: %d image(s) of the snapshot were gone from %s (deleted meanwhile?): %s",
            len(missing),
            media_root,
            ", ".join(missing[:3]),
        )
    return {
        "sha256": hashing.digest.hexdigest(),
        "size_bytes": hashing.size,
        "images": images,
        "image_bytes": image_bytes,
        "missing": len(missing),
    }


def archive_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Read the whole archive back: its members must be the images it claims."""
    try:
        count = 0
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or not _MEMBER_RE.match(member.name):
                    return f"unexpected member {member.name[:80]!r}"
                count += 1
    except (OSError, tarfile.TarError, EOFError) as exc:
        return f"unreadable ({exc})"
    if count != int(entry.get("images", -1)):
        return f"{count} image(s) in it, the manifest says {entry.get('images')}"
    return None


@dataclass(frozen=True, slots=True)
class MediaRestore:
    """What a restore did with the images."""

    restored: int  # written from the snapshot
    unchanged: int  # already there with the same content
    set_aside: int  # files of the replaced database, moved to ``aside``
    missing: int  # rows of the restored database without a file
    aside: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _same(path: Path, size: int, digest: str) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _write_private(store: MediaStore, relative: str, content: bytes) -> None:
    target = store.path_of(relative)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(store.root, 0o700)
        os.chmod(target.parent, 0o700)
    tmp = target.with_suffix(".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def extract_archive(archive: Path, media_root: Path) -> tuple[int, int]:
    """Write the archive's images under ``media_root``; returns (written, unchanged)."""
    store = MediaStore(media_root)
    media_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = unchanged = 0
    with tarfile.open(archive, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or not _MEMBER_RE.match(member.name):
                raise ValueError(f"unexpected member {member.name[:80]!r} in {archive.name}")
            handle = tar.extractfile(member)
            if handle is None:
                continue
            content = handle.read()
            if _same(store.path_of(member.name), len(content), _sha(content)):
                unchanged += 1
                continue
            _write_private(store, member.name, content)
            written += 1
    return written, unchanged


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def set_aside_unreferenced(db_path: Path, media_root: Path, aside: Path) -> tuple[int, int]:
    """Move the files ``db_path`` does not refer to under ``aside`` (same layout, 0700).

    Returns (moved, rows whose file is missing).
    """
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        refs = referenced_paths(conn)
    finally:
        conn.close()
    files = stored_files(media_root)
    moved = 0
    for relative in sorted(set(files) - refs):
        target = aside / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(aside, 0o700)
        os.replace(media_root / relative, target)
        moved += 1
    for folder in sorted({Path(r).parent for r in set(files) - refs}):
        with contextlib.suppress(OSError):
            (media_root / folder).rmdir()  # only when empty now
    missing = sum(1 for r in refs if r not in files)
    return moved, missing
