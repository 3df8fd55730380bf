"""Vigil's processes as the others see them: PIDs, the PID file, exit codes.

Standard library only: the supervisor, the server, the worker and the CLI
all import it (the supervisor stays small).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to (symlinks followed); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# Exit code of a server that asks to be restarted (the governor, /restart/force,
# a scheduled restart), and what the supervisor reads as "restart me, on
# purpose": sysexits' EX_TEMPFAIL, "try again later".
RESTART_REQUESTED = 75


def pid_alive(pid: int) -> bool:
    """Does a process with this PID exist (also one we may not signal)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid_file(pid_file: Path) -> int | None:
    """The PID written in ``pid_file`` (``data/vigil.pid``); None if missing or garbage."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def server_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` if that process is alive and is Vigil's."""
    pid = read_pid_file(pid_file)
    if pid is None or pid == os.getpid():
        return None
    if not pid_alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        # A recycled PID that now belongs to some other program is not a server.
        if b"main.py" not in cmdline.read_bytes() and b"vigil" not in cmdline.read_bytes():
            return None
    return pid


# The supervisor holds an exclusive ``flock`` on this file (in the data
# directory) for as long as it lives; the kernel drops it on any exit,
# kill -9 included. It is the one test of "is Vigil running here?": a PID
# file or a command line only says what some process was or looks like.
SUPERVISOR_LOCK_NAME = "supervisor.json.lock"


def holds_flock(pid: int, path: Path, *, proc: Path = PROC) -> bool:
    """Does process ``pid`` hold an ``flock`` on ``path`` (through one of its own fds)?

    Read from ``/proc/<pid>/fd`` and ``fdinfo``: an fd on the file whose
    ``lock:`` line names a granted FLOCK (a waiter's line has ``->``). Nothing
    is locked or unlocked here. False for a process we may not inspect.
    """
    ident = file_identity(path)
    if ident is None:
        return False
    fd_dir = proc / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(fd_dir / fd)
            if (st.st_dev, st.st_ino) != ident:
                continue
            info = (proc / str(pid) / "fdinfo" / fd).read_text()
        except OSError:
            continue
        for line in info.splitlines():
            words = line.split()
            if words[:1] == ["lock:"] and "FLOCK" in words and "->" not in words:
                return True
    return False


def flock_holder(path: Path, *, proc: Path = PROC) -> int | None:
    """The PID of the process holding an ``flock`` on ``path``, if we can see it."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for name in entries:
        if name.isdigit() and int(name) != os.getpid() and holds_flock(int(name), path, proc=proc):
            return int(name)
    return None


def running_supervisor(data_dir: Path) -> int | None:
    """The PID of the live supervisor of ``data_dir`` (it holds the lock), else None.

    Only looked at, never locked: taking the lock even for an instant could
    make a supervisor starting at that moment give up.
    """
    return flock_holder(data_dir / SUPERVISOR_LOCK_NAME)


def started_from(pid: int, *, proc: Path = PROC) -> str:
    """The working directory of ``pid`` (the checkout it was started from), or "?"."""
    try:
        return os.readlink(proc / str(pid) / "cwd")
    except OSError:
        return "?"


def is_supervised_by(parent: int, data_dir: Path) -> bool:
    """Is ``parent`` Vigil's supervisor for ``data_dir`` (does it hold the lock)?"""
    return parent > 1 and holds_flock(parent, data_dir / SUPERVISOR_LOCK_NAME)
