"""Temp files of backups in progress: their names, who owns them, and the sweep.

A backup writes its uncompressed copy, its compressed file and its manifest
under ``data/backups/`` with names that say what they are and whose they are:
``.backup-tmp.<pid>.<name>.db``, ``...db.gz``, ``...json``. A backup that fails
removes its own; one killed outright (kill -9, the OOM killer) cannot, and its
files can be as big as the database.

While it runs, a backup holds a shared ``flock`` on ``data/backups/.backup.lock``.
A temp file is stale when the backup that wrote it is gone: its process no
longer exists, or no backup at all holds the lock. The next backup and
``cleanup`` remove stale ones whatever their age; ``validate`` reports them
with their size. Files of a backup still running are never touched, however
long its integrity check takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.backups.file_users import try_flock
from core.process import pid_alive

PREFIX = ".backup-tmp."
LOCK_NAME = ".backup.lock"
# Names an older Vigil used (".NAME.db.tmp", ".NAME.json.tmp"): no owner recorded.
LEGACY_GLOB = ".*.tmp"


def temp_path(directory: Path, name: str, suffix: str, *, pid: int | None = None) -> Path:
    """``directory/.backup-tmp.<pid>.<name><suffix>``, owned by this process by default."""
    return directory / f"{PREFIX}{os.getpid() if pid is None else pid}.{name}{suffix}"


def owner_of(path: Path) -> int | None:
    """The pid recorded in a temp file's name (None for a legacy or foreign name)."""
    if not path.name.startswith(PREFIX):
        return None
    pid, _, _rest = path.name[len(PREFIX) :].partition(".")
    return int(pid) if pid.isdigit() else None


def temp_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = set(directory.glob(PREFIX + "*")) | set(directory.glob(LEGACY_GLOB))
    # Files, and the image directory a backup fills (``...<name>.media``).
    return sorted(p for p in found if p.is_file() or (p.is_dir() and p.name.startswith(PREFIX)))


def _lock_fd(directory: Path) -> int:
    return os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def backup_running(directory: Path) -> Iterator[None]:
    """Held (shared) for a whole backup: its temp files are not stale meanwhile."""
    fd = _lock_fd(directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a sweep, which is quick
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _no_backup_running(directory: Path) -> Iterator[bool]:
    """Exclusive lock if no backup runs (held while sweeping, so none starts); else False."""
    try:
        fd = _lock_fd(directory)
    except OSError:
        yield False
        return
    try:
        yield try_flock(fd)
    finally:
        os.close(fd)


def _stale(path: Path, *, none_running: bool) -> bool:
    if none_running:
        return True
    owner = owner_of(path)
    return owner is not None and owner != os.getpid() and not pid_alive(owner)


@dataclass(frozen=True, slots=True)
class Leftovers:
    paths: list[Path]
    size_bytes: int


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sizes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += _size(path)
    return total


def find_leftovers(directory: Path) -> Leftovers:
    """Stale temp files and their total size (nothing is removed)."""
    candidates = temp_files(directory)
    if not candidates:
        return Leftovers([], 0)
    with _no_backup_running(directory) as none_running:
        stale = [p for p in candidates if _stale(p, none_running=none_running)]
    return Leftovers(stale, _sizes(stale))


def sweep_leftovers(directory: Path) -> Leftovers:
    """Remove stale temp files of backups that never finished; returns what went."""
    candidates = temp_files(directory)
    if not candidates:
        return Leftovers([], 0)
    removed: list[Path] = []
    size = 0
    with _no_backup_running(directory) as none_running:
        for path in candidates:
            if not _stale(path, none_running=none_running):
                continue
            with contextlib.suppress(OSError):
                bytes_ = _size(path)
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
                size += bytes_
    return Leftovers(removed, size)
