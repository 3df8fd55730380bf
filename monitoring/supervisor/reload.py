"""SIGHUP in the supervisor: reopen its log files, reload its log level and format.

The supervisor never imports pydantic (it stays small for weeks), so the
settings are read by a short-lived ``python -c`` helper
(:func:`core.reload.print_log_values`) whose JSON answer is taken up on a later
loop tick; the loop never waits for it. Its other settings (backoff, flap
limit, watchdog, ...) apply at the next full stop/start; the server's reload
says which changed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.logs import reopen_logging

log = logging.getLogger(__name__)
HELPER = "import sys, core.reload as r; sys.exit(r.print_log_values())"


class LogReloader:
    """``start()`` on SIGHUP; ``poll()`` every loop tick."""

    def __init__(self, *, root: Path, level: str, json_lines: bool) -> None:
        self.root = root
        self.values: dict[str, Any] = {"log_level": level, "log_json": json_lines}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        reopen_logging()  # logrotate renamed the files: new ones appear now
        if self.proc is not None:
            return  # one helper at a time; it reads the newest file anyway
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), env.get("PYTHONPATH", "")) if p
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", HELPER],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            log.warning("reload (supervisor): cannot read the settings: %s", exc)

    def poll(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is None:
            return
        self.proc = None
        out = proc.stdout.read() if proc.stdout is not None else b""
        if proc.stdout is not None:
            proc.stdout.close()
        try:
            values = json.loads(out or b"{}")
        except ValueError:
            values = {"error": f"the settings helper exited {proc.returncode}"}
        if not isinstance(values, dict) or "error" in values or not values:
            error = values.get("error") if isinstance(values, dict) else values
            log.debug("reload (supervisor): old settings kept: %s", error)
            return
        changed = {k: v for k, v in values.items() if k in self.values and self.values[k] != v}
        if not changed:
            return
        reopen_logging(
            level=str(values.get("log_level", self.values["log_level"])),
            json_lines=bool(values.get("log_json", self.values["log_json"])),
        )
        for name, value in changed.items():
            log.warning(
                "reload: %s %s -> %s (supervisor, pid %d)",
                name,
                self.values[name],
                value,
                os.getpid(),
            )
            self.values[name] = value
