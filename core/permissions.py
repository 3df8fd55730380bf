"""Can Vigil write where it must? One line naming the path and the fix if not.

A read-only data directory (a read-only mount, files owned by another user)
makes SQLite say "attempt to write a readonly database", which read like
corruption; restoring an old snapshot would be the wrong fix. Every entry
point that writes (``serve``, ``supervise``, ``preflight``) asks here first
and exits with :data:`EXIT_CONFIG`, which the supervisor retries slowly
instead of looping on it as a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import Settings

# sysexits' EX_CONFIG: the setup must be fixed; retrying at once will not help.
EXIT_CONFIG = 78
DB_SUFFIXES = ("", "-wal", "-shm")


def storage_problem(settings: Settings) -> str | None:
    """One line when a directory or file Vigil writes is not writable, else None.

    Creates the data and logs directories (mode 0700) when missing.
    """
    for directory in (settings.data_dir, settings.logs_dir):
        problem = _directory_problem(directory)
        if problem:
            return problem
    for db in (settings.db_path, settings.tasks_db_path):
        for suffix in DB_SUFFIXES:
            path = Path(f"{db}{suffix}")
            if path.exists():
                try:
                    os.close(os.open(path, os.O_RDWR))
                except OSError as exc:
                    return describe(path, exc)
    return None


def _directory_problem(directory: Path) -> str | None:
    try:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".vigil-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return describe(directory, exc)
    return None


def describe(path: Path, exc: OSError) -> str:
    """The operator's line: what cannot be written, why, and what to do."""
    name, user = _user()
    reason = exc.strerror or str(exc)
    where = path if path.is_dir() or not path.exists() else path.parent
    if exc.errno == errno.EROFS:
        fix = (
            f"the file system holding {where} is mounted read-only: remount it read-write, "
            "or set VIGIL_DATA_DIR / VIGIL_LOGS_DIR to a writable directory"
        )
    else:
        fix = (
            f"Vigil runs as user {user} and must be able to write {where}: "
            f"e.g. 'sudo chown -R {name} {where}' and 'chmod u+rwX {where}', "
            "or set VIGIL_DATA_DIR / VIGIL_LOGS_DIR to a directory it can write"
        )
    return (
        f"cannot write {path} ({reason}). This is a permission problem, not a damaged "
        f"database: {fix}"
    )


def _user() -> tuple[str, str]:
    """(name for chown, description) of the user Vigil runs as."""
    uid = os.getuid()
    with contextlib.suppress(KeyError):
        name = pwd.getpwuid(uid).pw_name
        return name, f"{name} (uid {uid})"
    return str(uid), f"uid {uid}"
