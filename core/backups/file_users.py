"""Who is using a file right now: an ``flock`` holder, or processes with it open.

Restore must never swap the database under a running Vigil. A PID file says
what a process was when the file was written; these say what is true now:

- the supervisor holds an exclusive ``flock`` on ``data/supervisor.json.lock``
  for as long as it lives (the kernel drops it on any exit, kill -9 included);
- every process that has a file open lists it under ``/proc/<pid>/fd``. Files
  are compared by device and inode, so every path to one file (absolute,
  relative, through a symlink, a hard link) is the same file.

Only processes we may inspect are seen (those of the same user, or all of
them as root), which is where a Vigil of this installation runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from core.process import PROC, file_identity


def same_file(a: Path, b: Path) -> bool:
    """Are ``a`` and ``b`` one file (by device/inode, or one resolved path if neither exists)?"""
    ident = file_identity(a)
    if ident is not None:
        return ident == file_identity(b)
    return file_identity(b) is None and Path(a).resolve() == Path(b).resolve()


def holders(path: Path, *, proc: Path = PROC) -> list[int]:
    """PIDs of other processes that have ``path`` open (this process left out)."""
    ident = file_identity(path)
    if ident is None:
        return []
    me, found = os.getpid(), []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _has_open(entry / "fd", ident):
            found.append(int(entry.name))
    return sorted(found)


def _has_open(fd_dir: Path, ident: tuple[int, int]) -> bool:
    try:
        fds = list(fd_dir.iterdir())
    except OSError:  # gone, a zombie, or another user's process
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            st = os.stat(fd)
            if (st.st_dev, st.st_ino) == ident:
                return True
    return False


def command_of(pid: int, *, proc: Path = PROC, limit: int = 60) -> str:
    """A short command line for messages: ``python main.py serve``."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [os.path.basename(argv[0].decode(errors="replace"))] if argv and argv[0] else []
    words += [a.decode(errors="replace") for a in argv[1:] if a]
    text = " ".join(words) or "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_holders(pids: list[int], *, proc: Path = PROC) -> str:
    """``pid 12 (python main.py serve), pid 40 (...)``."""
    return ", ".join(f"pid {pid} ({command_of(pid, proc=proc)})" for pid in pids)


def try_flock(fd: int) -> bool:
    """Take ``fd``'s exclusive ``flock`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(path: Path | None) -> Iterator[bool]:
    """Try to take ``path``'s ``flock`` without waiting; yields whether we hold it.

    Held until the block ends, so whoever else takes it meanwhile (a
    supervisor starting) is refused. A missing directory means nothing can
    hold it: yields True without creating anything.
    """
    if path is None or not path.parent.is_dir():
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not try_flock(fd):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
