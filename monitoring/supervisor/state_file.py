"""``data/supervisor.json`` (read by ``GET /restart/status``) and its lifetime lock."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StateFile:
    """The supervisor's state, replaced atomically; its flock allows one supervisor."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> bool:
        """One supervisor per data directory (start.sh and systemd must not both run)."""
        if self.path is None:
            return True
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.error(
                "another supervisor (pid %s) already runs for %s; not starting a second one",
                self.read().get("pid", "?"),
                self.path.parent,
            )
            return False
        self._lock_fd = fd
        return True

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text())) if self.path else {}
        except (OSError, ValueError):
            return {}

    def write(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.path)  # readers never see half a file
