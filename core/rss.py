"""Resident memory (RSS) of a process, read one way: psutil.

The server's exit record, the supervisor's child records, the governor's
cleanup report and its process-tree snapshots all read RSS here. The module
imports nothing of Vigil's, so the supervisor can use it without pulling the
server's dependencies (psutil itself costs about 4 MB of RSS on import).
"""

from __future__ import annotations

import psutil

MB = 1024 * 1024


def rss_bytes(process: psutil.Process) -> int:
    """RSS of a held process; raises ``psutil.Error`` when it is gone or hidden."""
    return int(process.memory_info().rss)


def rss_mb(pid: int | None = None) -> float | None:
    """RSS of ``pid`` (default: this process) in MB, one decimal; None when unknown."""
    try:
        return round(rss_bytes(psutil.Process(pid)) / MB, 1)
    except (psutil.Error, ValueError):  # gone, hidden, or not a valid pid
        return None
