"""The checks behind ``/health`` that touch the disk, run on their own schedule.

``GET /health`` is polled all day by monitors; it must cost about what a bare
endpoint costs. So every check that does I/O (a database read, the write
state, the supervisor's state file) runs here, every
``VIGIL_HEALTH_CHECK_INTERVAL_S``, and ``/health`` reads the latest results
with their age. A check is one small async function ``(runtime) ->
CheckResult``; adding one is adding a function to :func:`default_checks`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.restarts import read_supervisor_state

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)

# Two or more restarts of a child within the supervisor's flap window: flapping.
FLAPPING_RESTARTS = 2
STATUS_RANK = {"ok": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict: ``status`` ok / degraded / unhealthy, and why."""

    status: str = "ok"
    reasons: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when it ran


Check = Callable[[Any], Awaitable[CheckResult]]


class DatabaseCheck:
    """Readable (a cheap query), and writable: no write failed recently.

    A write that failed within ``VIGIL_HEALTH_WRITE_ERROR_HOLD_S`` makes Vigil
    degraded with the error's code (``disk_full``, ``readonly``, ...), even if
    a smaller write succeeded since (a nearly full disk takes some writes and
    refuses others). When no write succeeded for
    ``VIGIL_HEALTH_WRITE_PROBE_AFTER_S`` a probe write decides: if it fails
    too, nothing can be written at all and Vigil is unhealthy, re-probed every
    round until a write succeeds again.
    """

    def __init__(self) -> None:
        self.unwritable = False

    async def __call__(self, runtime: Runtime) -> CheckResult:
        db, settings = runtime.db, runtime.settings
        replaced = db.check_file()  # one stat; writes check it too
        if replaced is not None:
            return CheckResult(
                "unhealthy",
                ("database_replaced",),
                {"status": "replaced", "code": "database_replaced", "how": replaced},
            )
        started = time.perf_counter()
        try:
            await db.ping()
        except Exception as exc:  # any storage failure is reported, not raised
            code = getattr(exc, "code", "database_error")
            log.warning("health: the database cannot be read: %s", exc)
            return CheckResult("unhealthy", (code,), {"status": "error", "code": code})
        ok = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        failed_at = getattr(db, "last_write_error_at", None)
        if failed_at is None:
            return CheckResult("ok", (), ok)
        error: Exception | None = db.last_write_error
        age = time.monotonic() - failed_at
        if self.unwritable or (
            last_write_failure(db) is not None and age >= settings.health_write_probe_after_s
        ):
            probe_error = await probe_write(db)
            self.unwritable = probe_error is not None
            error = probe_error or error
        if not self.unwritable and age >= settings.health_write_error_hold_s:
            return CheckResult("ok", (), ok)  # recovered: nothing failed for a while
        code = str(getattr(error, "code", "storage_error"))
        details = {
            **ok,
            "status": "error" if self.unwritable else "write_failing",
            "code": code,
            "write_error_age_s": round(age, 1),
        }
        return CheckResult("unhealthy" if self.unwritable else "degraded", (code,), details)


def last_write_failure(db: Any) -> Any:
    """The last write error when no write succeeded after it, else None."""
    failed_at = getattr(db, "last_write_error_at", None)
    if failed_at is None:
        return None
    ok_at = getattr(db, "last_write_ok_at", None)
    if ok_at is not None and ok_at > failed_at:
        return None
    return db.last_write_error


async def probe_write(db: Any) -> Exception | None:
    """Write the schema version back unchanged: the smallest real write."""
    try:
        version = int(await db.scalar("PRAGMA user_version"))
        await db.write(f"PRAGMA user_version = {version}")
    except Exception as exc:  # the verdict, not a crash
        return exc
    return None


async def check_children(runtime: Runtime) -> CheckResult:
    """Children of the supervisor that failed (flap limit) or keep restarting."""
    state = await asyncio.to_thread(read_supervisor_state, runtime.settings.data_dir)
    children = state.get("children") if state.get("supervised") else None
    reasons: list[str] = []
    for name, child in sorted((children or {}).items()):
        if not isinstance(child, dict):
            continue
        restarts = child.get("restarts_in_window")
        if child.get("state") == "failed":
            reasons.append(f"{name}_failed")
        elif isinstance(restarts, int) and restarts >= FLAPPING_RESTARTS:
            reasons.append(f"{name}_flapping")
    status = "degraded" if reasons else "ok"
    return CheckResult(status, tuple(reasons), {"status": status, "supervised": bool(children)})


async def check_backups(runtime: Runtime) -> CheckResult:
    """The newest backup failed, or the last success is older than twice the period.

    Backups run in the worker and the CLI, so this reads ``backup_runs`` (see
    core/backups/state.py) every round; the reasons are ``backup_failed`` and
    ``backup_stale``. A database that cannot be read is the database check's
    finding, not this one's.
    """
    from core.backups.state import read_backup_state_async

    try:
        state = await read_backup_state_async(runtime.db, runtime.settings, time.time())
    except Exception as exc:  # the verdict, not a crash
        return CheckResult("ok", (), {"status": "unknown", "error": str(exc).splitlines()[0]})
    details = state.to_dict()
    details.pop("checked_at", None)
    details["state"] = details.pop("status")
    reason = state.reason
    if reason is None:
        return CheckResult("ok", (), {"status": "ok", **details})
    return CheckResult("degraded", (reason,), {"status": "degraded", **details})


def default_checks() -> dict[str, Check]:
    """A fresh set of checks (some keep state between rounds)."""
    return {"database": DatabaseCheck(), "children": check_children, "backups": check_backups}


class HealthChecks:
    """Runs the checks every ``interval_s`` and keeps the latest results."""

    def __init__(
        self, runtime: Runtime, *, interval_s: float, checks: dict[str, Check] | None = None
    ) -> None:
        self.runtime = runtime
        self.interval_s = interval_s
        self.checks = default_checks() if checks is None else dict(checks)
        self.results: dict[str, CheckResult] = {}
        self.runs = 0
        # Run after every round (monitoring turns findings into alerts).
        self.after_round: list[Callable[[], Awaitable[None]]] = []
        # /health's encoded body and the inputs it was built from (core/health.py).
        self.encoded: tuple[tuple[Any, ...], bytes, int] | None = None

    async def run_once(self) -> None:
        for name, check in self.checks.items():
            try:
                result = await check(self.runtime)
            except Exception as exc:  # loop boundary: a broken check is a finding
                log.exception("health check %s failed", name)
                result = CheckResult("degraded", (f"{name}_check_failed",), {"error": str(exc)})
            self.results[name] = CheckResult(
                result.status, result.reasons, result.details, time.monotonic()
            )
        self.runs += 1
        for hook in self.after_round:
            try:
                await hook()
            except Exception:  # loop boundary
                log.exception("health check hook failed")

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.run_once()

    def snapshot(self, now: float) -> tuple[str, list[str], dict[str, dict[str, Any]]]:
        """(worst status, reasons, per-check details with ``age_s``) of the latest run."""
        status = "ok"
        reasons: list[str] = []
        details: dict[str, dict[str, Any]] = {}
        for name, result in self.results.items():
            if STATUS_RANK[result.status] > STATUS_RANK[status]:
                status = result.status
            reasons.extend(result.reasons)
            details[name] = {**result.details, "age_s": round(now - result.at, 1)}
        return status, reasons, details
