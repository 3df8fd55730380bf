"""Vigil's processes as the others see them: PIDs, the PID file, exit codes.

Standard library only: the supervisor, the server, the worker and the CLI
all import it (the supervisor stays small).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

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
