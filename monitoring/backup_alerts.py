"""Alerts for backups: ``backup_failed`` and ``backup_stale``, from the health check.

Backups run in the worker and the CLI; the server's health check reads
``backup_runs`` every round (``core.health_checks.check_backups``) and this
hook, run after each round, turns its verdict into alerts through the usual
path (alerts table, log, webhook, Telegram admin). An alert is resolved when
a backup succeeds again (or, for ``backup_stale``, when a fresh one exists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.runtime import Runtime
    from monitoring.system import IntegratedMonitoringSystem

ACTION_FAILED = (
    "check the backup directory (VIGIL_BACKUP_DIR: exists, writable, free space), then run "
    "`scripts/vigilctl backup`; `scripts/vigilctl status` shows the last error"
)
ACTION_STALE = (
    "check that the worker runs (`scripts/vigilctl status`) and the backup schedule "
    "(VIGIL_TASK_SCHEDULE), then run `scripts/vigilctl backup`"
)


async def report_backups(system: IntegratedMonitoringSystem, runtime: Runtime) -> None:
    checks = runtime.health
    result = checks.results.get("backups") if checks is not None else None
    if result is None:
        return
    details: dict[str, Any] = result.details
    message = str(details.get("message") or "")
    await system.condition(
        "backup_failed",
        "backup_failed" in result.reasons,
        alert_type="backup_failed",
        severity="high",
        message=message,
        action=ACTION_FAILED,
    )
    await system.condition(
        "backup_stale",
        "backup_stale" in result.reasons,
        alert_type="backup_stale",
        severity="high",
        message=message,
        action=ACTION_STALE,
    )
