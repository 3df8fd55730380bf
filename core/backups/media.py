"""The images of a snapshot: kept with it, checked, put back on restore.

A snapshot holds the image files its own database copy refers to (the
``message_images`` rows of the copy, read right after the copy), not every
file under ``data/media``: a row in the snapshot has its file, and a file no
row refers to (an orphan) is not kept. They go into a directory next to the
pair, ``NAME.media/`` (0700; the same ``<folder>/<id>.jpg`` layout, files
0600) with an ``index.tsv`` (path, size, sha256 per image); the manifest's
``files`` lists it as ``media`` with the index's sha256, the number of images,
their bytes and the bytes this snapshot added.

Images never change once stored, so a snapshot *hard-links* every image the
previous snapshot already holds (after checking its sha256) and copies only
the new ones: thirty snapshots of the same images take the room of one, and
each snapshot is still a self-contained directory (deleting one leaves the
others whole; ``cp -r`` copies it entirely). Where links are refused (some
network or FAT file systems) the image is copied.

A file removed between the copy and the archive (a chat deleted meanwhile) is
recorded as ``missing``; the restored database shows such an image as text.

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
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.files import write_private
from core.media import MediaStore
from core.media_upkeep import referenced_paths, stored_files

log = logging.getLogger(__name__)

ROLE = "media"
SUFFIX = ".media"
INDEX = "index.tsv"
# Paths are what MediaStore.save writes; anything else in an index is refused.
_PATH_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}/[0-9A-Za-z_-]{1,64}\.jpg$")
CHUNK = 1 << 20

Index = dict[str, tuple[int, str]]  # path -> (size, sha256)


def _rows(db_copy: Path) -> list[str]:
    conn = sqlite3.connect(db_copy.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return sorted(referenced_paths(conn))
    finally:
        conn.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)


def read_index(directory: Path) -> Index:
    """The index of a snapshot's image directory; ValueError when it is not one."""
    index: Index = {}
    text = (directory / INDEX).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        path, _, rest = line.partition("\t")
        size, _, digest = rest.partition("\t")
        if not _PATH_RE.match(path) or not size.isdigit() or len(digest) != 64:
            raise ValueError(f"line {number} of {INDEX} is not 'path<TAB>size<TAB>sha256'")
        index[path] = (int(size), digest)
    return index


def _copy_private(source: Path, target: Path) -> tuple[int, str]:
    """Copy ``source`` to ``target`` (0600, fsynced); returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _link_previous(previous: Path | None, known: Index, relative: str, target: Path) -> bool:
    """Hard-link the previous snapshot's copy of an image when it is still sound."""
    if previous is None or relative not in known:
        return False
    source = previous / relative
    try:
        if _sha256(source) != known[relative][1]:
            log.warning("backup: %s in %s is damaged; copied afresh", relative, previous.name)
            return False
        os.link(source, target)
    except OSError:  # gone, or a file system without hard links: copy instead
        return False
    return True


def write_images(
    db_copy: Path, media_root: Path, target: Path, *, previous: Path | None = None
) -> dict[str, Any]:
    """Put the images ``db_copy`` refers to in the directory ``target`` (created here).

    Images ``previous`` (an earlier snapshot's directory) holds are hard-linked;
    the others are copied from ``media_root``. Returns the manifest entry
    without ``file`` (the caller renames the directory into place).
    """
    store = MediaStore(media_root)
    try:
        known = read_index(previous) if previous is not None else {}
    except (OSError, ValueError):
        known, previous = {}, None
    _mkdir_private(target)
    index: list[str] = []
    images = image_bytes = added = 0
    missing: list[str] = []
    for relative in _rows(db_copy):
        if not _PATH_RE.match(relative):
            missing.append(relative)
            continue
        out = target / relative
        _mkdir_private(out.parent)
        if _link_previous(previous, known, relative, out):
            size, digest = known[relative]
        else:
            try:
                size, digest = _copy_private(store.path_of(relative), out)
            except FileNotFoundError:
                missing.append(relative)
                continue
            added += size
        index.append(f"{relative}\t{size}\t{digest}\n")
        images += 1
        image_bytes += size
    content = "".join(index).encode("utf-8")
    fd = os.open(target / INDEX, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    if missing:
        log.warning(
            "backup: %d image(s) of the snapshot were gone from %s (deleted meanwhile?): %s",
            len(missing),
            media_root,
            ", ".join(missing[:3]),
        )
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": added + len(content),
        "images": images,
        "image_bytes": image_bytes,
        "missing": len(missing),
    }


def images_problem(directory: Path, entry: dict[str, Any]) -> str | None:
    """Read every image back: the index must match the manifest, each file its index line."""
    try:
        if _sha256(directory / INDEX) != entry.get("sha256"):
            return f"checksum mismatch of its {INDEX}"
        index = read_index(directory)
    except (OSError, ValueError) as exc:
        return f"unreadable index ({exc})"
    if len(index) != int(entry.get("images", -1)):
        return f"{len(index)} image(s) in it, the manifest says {entry.get('images')}"
    for relative, (size, digest) in index.items():
        path = directory / relative
        try:
            if path.is_symlink() or path.stat().st_size != size or _sha256(path) != digest:
                return f"checksum mismatch of the image {relative}"
        except OSError as exc:
            return f"the image {relative} cannot be read ({exc.strerror or exc})"
    return None


def remove_images(directory: Path) -> None:
    """Delete a snapshot's image directory (other snapshots' links keep their data)."""
    if directory.is_dir() and not directory.is_symlink():
        shutil.rmtree(directory, ignore_errors=True)
    else:
        directory.unlink(missing_ok=True)


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
    write_private(target, content, tmp=target.with_suffix(".part"))


def extract_images(directory: Path, media_root: Path) -> tuple[int, int]:
    """Write a snapshot's images under ``media_root``; returns (written, unchanged)."""
    store = MediaStore(media_root)
    _mkdir_private(media_root)
    written = unchanged = 0
    for relative, (size, digest) in read_index(directory).items():
        content = (directory / relative).read_bytes()
        if _sha(content) != digest:
            raise ValueError(f"checksum mismatch of the image {relative}")
        if _same(store.path_of(relative), size, digest):
            unchanged += 1
            continue
        _write_private(store, relative, content)
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
