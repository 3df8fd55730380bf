"""Start the supervisor in a small process of its own.

The supervisor runs for weeks and needs only the standard library, but
``main.py`` imports typer and pydantic (``Settings``) to check the
configuration. ``python main.py supervise`` therefore checks everything
(settings, permissions, the database, the schema) with the full CLI, then
:func:`exec_supervisor` replaces that process (same PID, so the PID file,
systemd and start.sh see no change) with a fresh interpreter that runs
:func:`run_resolved` on the resolved values, read from a pipe (no secret on
the command line or in the environment).

This module imports only the standard library and ``core`` modules that do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core.logs import setup_logging
from core.restarts import RestartLog
from monitoring.supervisor.children import ChildSpec
from monitoring.supervisor.policy import Policy
from monitoring.supervisor.reload import LogReloader
from monitoring.supervisor.runner import Alerter, Supervisor
from monitoring.supervisor.webhook import webhook_alerter

if TYPE_CHECKING:
    from core.config import Settings

# ``main.py supervise RESOLVED_FD <fd>``: the re-executed, light supervisor.
RESOLVED_FD = "--resolved-fd"


def resolve(
    settings: Settings, children: list[ChildSpec], *, state_file: Path, console: bool
) -> dict[str, Any]:
    """Everything the light supervisor needs, as JSON-able values."""
    return {
        "children": [dataclasses.asdict(child) for child in children],
        "policy": dataclasses.asdict(Policy.from_settings(settings)),
        "state_file": str(state_file),
        "db_path": str(settings.db_path),
        "webhook_url": settings.alert_webhook_url or None,
        "logs": {
            "logs_dir": str(settings.logs_dir),
            "level": settings.log_level,
            "secrets": settings.secrets(),
            "json_lines": settings.log_json,
            "console": console,
        },
    }


def exec_supervisor(resolved: dict[str, Any], *, main_py: str) -> NoReturn:
    """Replace this process with ``python main.py supervise --resolved-fd N``."""
    data = json.dumps(resolved).encode()
    read_fd, write_fd = os.pipe()
    # A pipe holds 64 KiB before a write blocks; the values are a few KiB.
    os.write(write_fd, data)
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, main_py, "supervise", RESOLVED_FD, str(read_fd)]
    os.execv(sys.executable, argv)


def read_resolved(fd: int) -> dict[str, Any]:
    """The values :func:`exec_supervisor` wrote (the pipe is closed after reading)."""
    with os.fdopen(fd, "rb") as pipe:
        values: dict[str, Any] = json.loads(pipe.read())
    return values


def run_resolved(fd_text: str) -> int:
    """The light supervisor's entry point; returns the process exit code."""
    try:
        resolved = read_resolved(int(fd_text))
        children = [ChildSpec(**child) for child in resolved["children"]]
        policy = Policy(**resolved["policy"])
        logs = resolved["logs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"vigil: {RESOLVED_FD} is for main.py's own use ({exc})", file=sys.stderr)
        return 2
    os.umask(0o077)
    setup_logging(
        Path(logs["logs_dir"]),
        level=logs["level"],
        secrets=logs["secrets"],
        json_lines=logs["json_lines"],
        console=logs["console"],
        rotates=frozenset(),
    )
    store = RestartLog(Path(resolved["db_path"]))  # prepared before the exec
    alerts: list[Alerter] = [store.alert]
    if resolved["webhook_url"]:
        alerts.insert(0, webhook_alerter(resolved["webhook_url"]))
    supervisor = Supervisor(
        children,
        policy,
        state_file=Path(resolved["state_file"]),
        record=store.record,
        alerts=alerts,
        open_alerts=store.open_alerts,
        reloader=LogReloader(
            root=Path(__file__).resolve().parents[2],
            level=logs["level"],
            json_lines=logs["json_lines"],
        ),
    )
    return supervisor.run()
