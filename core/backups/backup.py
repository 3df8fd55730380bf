"""Backups of ``system.db``: online copy, compression, checksums, verified restore.

A snapshot is two files in ``data/backups/``: ``NAME.db.gz`` (the database,
gzip-compressed) and ``NAME.json`` (its manifest: sha256 of the compressed
file, sizes, counts, schema version), plus the files its manifest lists: the
session and settings files (core/backups/extras.py) and the images the
database refers to (the directory ``NAME.media/``, core/backups/media.py).
The manifest is written last, so a snapshot without one is an interrupted
backup and is ignored. The file name is the snapshot's name: an operator may
rename or copy a pair, and the name recorded inside the manifest is then only
reported, never used to find files.

The copy uses SQLite's online backup API from inside one read transaction, so
in WAL mode it is a consistent picture of the moment the backup began while
the server keeps writing. Every copy passes ``PRAGMA integrity_check`` before
it is compressed, and the compressed file is read back (checksum and gzip CRC)
before the backup counts as done. Used by the CLI and the Huey tasks alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.backups import media
from core.backups.temp import backup_running, sweep_leftovers, temp_path
from core.database import BUSY_TIMEOUT_S, guard_stale_wal
from core.errors import BadRequest, NotFound, StorageError, StorageFull, VigilError
from core.files import write_private

log = logging.getLogger(__name__)

DATA_SUFFIX = ".db.gz"
# The extras' files (see core/backups/extras.py); never .json or .db.gz.
EXTRA_SUFFIXES: dict[str, str] = {
    "session": ".session",
    "session_marker": ".session-server",
    "env": ".env",
    "config": ".config",
    media.ROLE: media.SUFFIX,  # the images, see core/backups/media.py
}
# `restore latest` means the newest verified snapshot: no snapshot may be named so.
RESERVED_NAMES = frozenset({"latest"})
MANIFEST_SUFFIX = ".json"
KINDS = ("manual", "auto", "pre-restore", "pre-migration")
STEP_PAGES = 4096
CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

# role -> (content, manifest description): see core/backups/extras.py.
Extras = dict[str, tuple[bytes, dict[str, Any]]]
# progress(phase, done, total): phases are copy, check, compress, verify, restore.
Progress = Callable[[str, int, int], None]


class BackupFailed(StorageError):
    code = "backup_failed"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class SnapshotDamaged(StorageError):
    code = "snapshot_damaged"


class InvalidName(BadRequest):
    code = "invalid_name"


class ServerRunning(VigilError):
    code = "server_running"
    status = 409


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One backup as described by its manifest."""

    name: str
    created_at: float
    kind: str
    size_bytes: int
    db_bytes: int
    sha256: str
    schema_version: int
    messages: int
    chats: int
    duration_s: float
    directory: Path
    # The name recorded inside the manifest (when read from one): provenance only.
    manifest_name: str = dataclasses.field(default="", compare=False)
    # The session and settings files kept with it (core/backups/extras.py):
    # role -> {"file", "sha256", "size_bytes", "source", ...}. Empty in older snapshots.
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def renamed(self) -> bool:
        """The manifest records another name: the files were renamed or copied."""
        return bool(self.manifest_name) and self.manifest_name != self.name

    @property
    def path(self) -> Path:
        return self.directory / (self.name + DATA_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        return self.directory / (self.name + MANIFEST_SUFFIX)

    @property
    def total_bytes(self) -> int:
        """The database file plus the session and settings files."""
        return self.size_bytes + sum(int(f.get("size_bytes", 0)) for f in self.files.values())

    def extra_path(self, role: str) -> Path:
        return self.directory / (self.name + EXTRA_SUFFIXES[role])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        recorded = data.pop("manifest_name")
        data["path"] = str(self.path)
        if not self.files:
            data.pop("files")
        if self.renamed:
            data["manifest_name"] = recorded
        return data


def no_progress(phase: str, done: int, total: int) -> None:
    return None


def check_name(name: str) -> str:
    """A snapshot name is a plain file stem: letters, digits, ``._-``."""
    name = name.removesuffix(DATA_SUFFIX).removesuffix(MANIFEST_SUFFIX)
    if not _NAME_RE.match(name):
        raise InvalidName(
            f"invalid snapshot name {name!r}: use up to 80 letters, digits, '.', '_' or '-'"
        )
    return name


def check_new_name(name: str) -> str:
    """A name for a new snapshot: valid, and not a reserved word such as ``latest``."""
    name = check_name(name)
    if name.lower() in RESERVED_NAMES:
        raise InvalidName(f"{name!r} is reserved (`restore latest` means the newest snapshot)")
    return name


def default_name(kind: str, now: float) -> str:
    prefix = {"auto": "auto", "pre-migration": "pre-migration"}.get(kind, "snapshot")
    return prefix + time.strftime("_%Y%m%d_%H%M%S", time.gmtime(now))


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def readonly_uri(path: Path) -> str:
    """A ``file:`` URI opening ``path`` read-only.

    The path is percent-encoded: formatted in raw, a '#' or '?' in a directory
    name would cut the path short (and SQLite would create that shorter file).
    """
    return Path(path).resolve().as_uri() + "?mode=ro"


def open_readonly(path: Path, *, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A plain read-only connection (autocommit: callers BEGIN explicitly)."""
    guard_stale_wal(path)  # a replaced database's old WAL must not be read as this one's
    return sqlite3.connect(readonly_uri(path), uri=True, timeout=timeout, isolation_level=None)


def _online_copy(source: Path, target: Path, progress: Progress) -> dict[str, int]:
    """Copy ``source`` to ``target`` with the backup API, as of one instant."""
    src = open_readonly(source)
    dst = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S)
    try:
        # The read transaction pins one WAL snapshot for every backup step, so
        # concurrent commits neither restart the copy nor leak into it.
        src.execute("BEGIN")
        counts = {
            "messages": int(src.execute("SELECT count(*) FROM messages").fetchone()[0]),
            "chats": int(src.execute("SELECT count(*) FROM chats").fetchone()[0]),
            "schema_version": int(src.execute("PRAGMA user_version").fetchone()[0]),
        }
        page = int(src.execute("PRAGMA page_size").fetchone()[0])
        src.backup(
            dst,
            pages=STEP_PAGES,
            progress=lambda _s, left, total: progress("copy", (total - left) * page, total * page),
        )
        src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    return counts


def integrity_problems(path: Path, *, quick: bool = False) -> list[str]:
    """``PRAGMA integrity_check`` of a plain database file; [] means healthy."""
    try:
        conn = open_readonly(path)
        try:
            pragma = "quick_check" if quick else "integrity_check"
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _compress(source: Path, target: Path, level: int, progress: Progress) -> tuple[str, int]:
    total = source.stat().st_size
    done = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, source.open("rb") as src:
        hashing = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=hashing, mode="wb", compresslevel=level, mtime=0) as gz:
            while chunk := src.read(CHUNK):
                gz.write(chunk)
                done += len(chunk)
                progress("compress", done, total)
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.digest.hexdigest(), hashing.size


def _write_manifest(snapshot: Snapshot) -> None:
    # A backup temp name: never listed, and swept if a kill -9 leaves it.
    tmp = temp_path(snapshot.directory, snapshot.name, MANIFEST_SUFFIX)
    manifest = json.dumps(snapshot.to_dict(), indent=2)
    write_private(snapshot.manifest_path, manifest, tmp=tmp)


def _check_space(db_path: Path, directory: Path) -> None:
    # Images are not counted: a snapshot links the ones the previous holds, and a
    # disk that fills while the new ones are copied fails the backup as StorageFull.
    need = sum(p.stat().st_size for p in _db_files(db_path) if p.exists())
    free = shutil.disk_usage(directory).free
    # The uncompressed copy plus the compressed file must fit at once.
    if free < need * 1.5 + CHUNK:
        raise StorageFull(
            f"not enough free disk for a backup: {free / 1e6:.0f} MB free in {directory}, "
            f"about {need * 1.5 / 1e6:.0f} MB needed"
        )


def _db_files(db_path: Path) -> list[Path]:
    return [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]


def refuse_existing(backups_dir: Path, name: str) -> None:
    if (backups_dir / (name + DATA_SUFFIX)).exists() or (
        backups_dir / (name + MANIFEST_SUFFIX)
    ).exists():
        raise BackupFailed(f"a snapshot named {name!r} already exists; choose another --name")


def ensure_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o700)


def backup_dir_problem(directory: Path, *, create: bool = True) -> str | None:
    """One line saying why snapshots cannot be written to ``directory``, or None."""
    hint = "set VIGIL_BACKUP_DIR to a writable directory, or fix it"
    try:
        if create:
            ensure_dir(directory)
        if not directory.is_dir():
            what = "does not exist" if not directory.exists() else "is not a directory"
            return f"backup directory {directory} {what}; {hint}"
        probe = temp_path(directory, "write-probe", ".tmp")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        return f"backup directory {directory} is not writable ({exc.strerror or exc}); {hint}"
    return None


def create_backup(
    db_path: Path,
    backups_dir: Path,
    *,
    name: str | None = None,
    kind: str = "manual",
    now: float | None = None,
    level: int = 1,
    progress: Progress = no_progress,
    extras: Extras | None = None,
    media_root: Path | None = None,
) -> Snapshot:
    """Take, compress, checksum and verify one snapshot of ``db_path``.

    ``extras`` (role -> (content, description)) are written next to it, mode
    0600, and listed with their sha256 in the manifest; so are the images
    under ``media_root`` that the copied database refers to.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not db_path.exists():
        raise StorageError(f"no database at {db_path}: nothing to back up")
    created = time.time() if now is None else now
    name = check_new_name(name) if name else default_name(kind, created)
    problem = backup_dir_problem(backups_dir)
    if problem is not None:
        raise BackupFailed(f"backup failed: {problem}")
    swept = sweep_leftovers(backups_dir)  # before the space check: they may be huge
    if swept.paths:
        log.warning(
            "removed %d temp file(s) of interrupted backups (%.1f MB)",
            len(swept.paths),
            swept.size_bytes / 1e6,
        )
    with backup_running(backups_dir):
        snapshot = _create_locked(
            db_path, backups_dir, name, kind, created, level, progress, extras or {}, media_root
        )
    log.info(
        "backup %s: %d messages, %.1f MB -> %.1f MB in %.2f s",
        name,
        snapshot.messages,
        snapshot.db_bytes / 1e6,
        snapshot.size_bytes / 1e6,
        snapshot.duration_s,
    )
    return snapshot


def _create_locked(
    db_path: Path,
    backups_dir: Path,
    name: str,
    kind: str,
    created: float,
    level: int,
    progress: Progress,
    extras: Extras,
    media_root: Path | None,
) -> Snapshot:
    refuse_existing(backups_dir, name)
    _check_space(db_path, backups_dir)
    draft = Snapshot(name, created, kind, 0, 0, "", 0, 0, 0, 0.0, backups_dir)
    try:
        return _produce(db_path, draft, level, progress, extras, media_root)
    except BaseException as exc:
        # Never leave a half-made snapshot that looks complete.
        roles = [*extras, media.ROLE]
        delete_snapshot(dataclasses.replace(draft, files={r: {} for r in roles}))
        if isinstance(exc, sqlite3.Error):
            raise BackupFailed(f"backup failed: {exc}") from exc
        if isinstance(exc, OSError):
            if exc.errno == 28:
                raise StorageFull(f"backup failed: the disk is full in {backups_dir}") from exc
            raise BackupFailed(f"backup failed: {exc.strerror or exc}") from exc
        raise


def _write_extra(snapshot: Snapshot, role: str, content: bytes) -> dict[str, Any]:
    target = snapshot.extra_path(role)
    write_private(
        target, content, tmp=temp_path(snapshot.directory, snapshot.name, EXTRA_SUFFIXES[role])
    )
    return {
        "file": target.name,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
    }


def _store_images(draft: Snapshot, copy: Path, media_root: Path) -> dict[str, Any] | None:
    """The images the copy refers to, next to the snapshot (None when it refers to none)."""
    building = temp_path(draft.directory, draft.name, media.SUFFIX)
    previous = next(
        (
            s.extra_path(media.ROLE)
            for s in list_snapshots(draft.directory)
            if media.ROLE in s.files and s.extra_path(media.ROLE).is_dir()
        ),
        None,
    )
    try:
        entry = media.write_images(copy, media_root, building, previous=previous)
        if not entry["images"] and not entry["missing"]:
            return None
        target = draft.extra_path(media.ROLE)
        os.replace(building, target)
    finally:
        media.remove_images(building)
    return {"file": target.name, **entry}


def _produce(
    db_path: Path,
    draft: Snapshot,
    level: int,
    progress: Progress,
    extras: Extras,
    media_root: Path | None = None,
) -> Snapshot:
    """Copy, check, compress, describe and read back; temp files always removed."""
    started = time.monotonic()
    copy = temp_path(draft.directory, draft.name, ".db")
    packed = temp_path(draft.directory, draft.name, DATA_SUFFIX)
    try:
        counts = _online_copy(db_path, copy, progress)
        # Right after the copy: the rows it holds and the files on disk match best now.
        images = None if media_root is None else _store_images(draft, copy, media_root)
        progress("check", 0, 1)
        problems = integrity_problems(copy)
        if problems:
            raise BackupFailed(
                f"the copy failed its integrity check ({problems[0]}); the database itself "
                "may be damaged: run `scripts/vigilctl validate`"
            )
        progress("check", 1, 1)
        digest, size = _compress(copy, packed, level, progress)
        os.replace(packed, draft.path)
        files = {
            role: {**_write_extra(draft, role, content), **description}
            for role, (content, description) in extras.items()
            if role in EXTRA_SUFFIXES and role != media.ROLE
        }
        if images is not None:
            files[media.ROLE] = images
        snapshot = dataclasses.replace(
            draft,
            size_bytes=size,
            db_bytes=copy.stat().st_size,
            sha256=digest,
            schema_version=counts["schema_version"],
            messages=counts["messages"],
            chats=counts["chats"],
            duration_s=round(time.monotonic() - started, 3),
            files=files,
        )
        _write_manifest(snapshot)
        verify_snapshot(snapshot, progress=progress)
        return snapshot
    finally:
        copy.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)


def _read_manifest(path: Path) -> Snapshot | None:
    """The snapshot described by ``path``, named after the file (see the module doc)."""
    name = path.name.removesuffix(MANIFEST_SUFFIX)
    if not _NAME_RE.match(name):
        log.warning("ignoring backup manifest %s: not a valid snapshot name", path)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Snapshot(
            name=name,
            created_at=float(data["created_at"]),
            kind=str(data.get("kind", "manual")),
            size_bytes=int(data["size_bytes"]),
            db_bytes=int(data["db_bytes"]),
            sha256=str(data["sha256"]),
            schema_version=int(data.get("schema_version", 0)),
            messages=int(data.get("messages", 0)),
            chats=int(data.get("chats", 0)),
            duration_s=float(data.get("duration_s", 0.0)),
            directory=path.parent,
            manifest_name=str(data["name"]),
            files=_read_files(data.get("files")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable backup manifest %s: %s", path, exc)
        return None


def _read_files(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(role): dict(entry)
        for role, entry in raw.items()
        if role in EXTRA_SUFFIXES and isinstance(entry, dict)
    }


def list_snapshots(backups_dir: Path) -> list[Snapshot]:
    """Every complete snapshot, newest first."""
    if not backups_dir.is_dir():
        return []
    found = [_read_manifest(p) for p in backups_dir.glob("*" + MANIFEST_SUFFIX)]
    return sorted((s for s in found if s), key=lambda s: (s.created_at, s.name), reverse=True)


def find_snapshot(backups_dir: Path, name: str) -> Snapshot:
    name = check_name(name)
    path = backups_dir / (name + MANIFEST_SUFFIX)
    snapshot = _read_manifest(path) if path.exists() else None
    if snapshot is None:
        raise SnapshotNotFound(
            f"no snapshot named {name!r} in {backups_dir} "
            "(list them with `scripts/vigilctl snapshots`)",
            name=name,
        )
    return snapshot


def verify_snapshot(snapshot: Snapshot, *, progress: Progress = no_progress) -> None:
    """Re-read the compressed file: sha256 and gzip CRC must both match."""
    if not snapshot.path.exists():
        raise SnapshotDamaged(f"snapshot {snapshot.name!r}: {snapshot.path.name} is missing")
    digest, done = hashlib.sha256(), 0
    try:
        with snapshot.path.open("rb") as raw:
            while chunk := raw.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                progress("verify", done, snapshot.size_bytes)
        if digest.hexdigest() != snapshot.sha256:
            raise SnapshotDamaged(f"snapshot {snapshot.name!r} is damaged: checksum mismatch")
        with gzip.open(snapshot.path, "rb") as gz:
            while gz.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise SnapshotDamaged(f"snapshot {snapshot.name!r} is damaged: {exc}") from exc
    for role, entry in snapshot.files.items():
        path = snapshot.extra_path(role)
        if role == media.ROLE:
            problem = media.images_problem(path, entry)
            if problem is not None:
                raise SnapshotDamaged(
                    f"snapshot {snapshot.name!r} is damaged: its images ({path.name}/): {problem}"
                )
            continue
        try:
            found = _file_sha256(path)
        except OSError as exc:
            raise SnapshotDamaged(
                f"snapshot {snapshot.name!r}: its {role} file {path.name} "
                f"cannot be read ({exc.strerror or exc})"
            ) from exc
        if found != entry.get("sha256"):
            raise SnapshotDamaged(
                f"snapshot {snapshot.name!r} is damaged: checksum mismatch of its {role} file"
            )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_extra(snapshot: Snapshot, role: str) -> bytes:
    """One extra's content, checked against the manifest."""
    entry = snapshot.files.get(role)
    if entry is None:
        raise SnapshotNotFound(f"snapshot {snapshot.name!r} holds no {role} file")
    try:
        content = snapshot.extra_path(role).read_bytes()
    except OSError as exc:
        raise SnapshotDamaged(
            f"snapshot {snapshot.name!r}: cannot read its {role} file ({exc.strerror or exc})"
        ) from exc
    if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
        raise SnapshotDamaged(
            f"snapshot {snapshot.name!r} is damaged: checksum mismatch of its {role} file"
        )
    return content


def delete_snapshot(snapshot: Snapshot) -> None:
    # Manifest first: a half-deleted snapshot then looks interrupted, not valid.
    snapshot.manifest_path.unlink(missing_ok=True)
    snapshot.path.unlink(missing_ok=True)
    for role in snapshot.files:
        if role == media.ROLE:
            media.remove_images(snapshot.extra_path(role))
        else:
            snapshot.extra_path(role).unlink(missing_ok=True)


def latest_verified(
    backups_dir: Path, *, progress: Progress = no_progress
) -> tuple[Snapshot, list[str]]:
    """The newest snapshot that reads back whole, and one line per newer damaged one skipped."""
    skipped: list[str] = []
    for snapshot in list_snapshots(backups_dir):
        try:
            verify_snapshot(snapshot, progress=progress)
        except SnapshotDamaged as exc:
            skipped.append(f"skipped {snapshot.name}: {exc.message}")
            continue
        return snapshot, skipped
    detail = f" ({len(skipped)} damaged)" if skipped else ""
    raise SnapshotNotFound(
        f"no verified snapshot in {backups_dir}{detail} (list them with `scripts/vigilctl "
        "snapshots --verify`)",
        name="latest",
    )
