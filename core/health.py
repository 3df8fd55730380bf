"""Health endpoints: ``/health`` (readiness and its checks) and ``/health/live``.

``/health/live`` checks no dependency (Kubernetes' rule): it answers while the
event loop runs. ``/health`` reports the latest background checks (database
reads and writes, supervised children; see ``core/health_checks.py``) with
their age, plus the model and Telegram; it does no I/O per request. A down
model only makes Vigil ``degraded``; a database that cannot be written at all
or a drain makes it ``unhealthy`` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from core import __version__
from core.health_checks import HealthChecks
from core.runtime import Runtime, RuntimeDep
from core.stt import stt_health

router = APIRouter(tags=["health"])


async def health_report(runtime: Runtime) -> dict[str, Any]:
    """The /health body; also used by /status and the CLI. No I/O when the
    background checks run (the server); otherwise they run once here."""
    checks = runtime.health
    if checks is None:
        checks = HealthChecks(runtime, interval_s=runtime.settings.health_check_interval_s)
        await checks.run_once()
    return build_report(runtime, checks)


def build_report(runtime: Runtime, checks: HealthChecks) -> dict[str, Any]:
    """The latest background results plus what is known in memory (model, Telegram, load)."""
    worst, found, details = checks.snapshot(time.monotonic())
    llm_status = runtime.llm.status
    llm = {
        "status": llm_status.state,
        "url": runtime.llm.display_url,
        "model": runtime.llm.model,
        "detail": llm_status.detail,
        "code": llm_status.code or None,
        "checked_at": llm_status.checked_at or None,
        "latency_ms": llm_status.latency_ms,
        "profile": runtime.llm.name,
        "profiles": runtime.models.states(),
    }
    telegram = runtime.telegram_state()
    status = "healthy"
    reasons: list[str] = []
    if llm["status"] != "ok":
        status = "degraded"
        reasons.append(f"llm_{llm['status']}")
    if telegram not in ("connected", "not_configured", "starting"):
        status = "degraded"
        reasons.append(f"telegram_{telegram}")
    if runtime.admission.throttled:
        status = "degraded"
        reasons.append("throttled")
    window = runtime.admission.maintenance
    if window is not None and not window.is_over(time.time()):
        # Up and monitored, but chatters are refused: degraded, never unhealthy
        # (a 503 here would make a load balancer or watchdog act on it).
        status = "degraded"
        reasons.append("maintenance")
    if worst == "degraded":
        status = "degraded"
    reasons.extend(found)
    if runtime.db.replaced is not None and "database_replaced" not in found:
        # Seen by a write since the last round: known in memory, no I/O needed.
        worst, found = "unhealthy", [*found, "database_replaced"]
        details = {**details, "database": {"status": "replaced", "code": "database_replaced"}}
    if worst == "unhealthy":
        status = "unhealthy"
    if runtime.admission.draining:
        status = "unhealthy"
        reasons.append(f"draining ({runtime.admission.drain_reason})")
    database = details.get("database", {}).get("status", "unknown")
    return {
        "status": status,
        "telegram": telegram,
        "database": database,
        "llm": llm["status"],
        "uptime_s": round(time.monotonic() - runtime.started_monotonic, 1),
        "version": __version__,
        "reasons": reasons,
        "in_flight_turns": runtime.admission.in_flight,
        "maintenance": None if window is None else window.to_dict(),
        # Speech to text never changes the status: only voice notes need it, and
        # their senders are told when it fails; the operator sees it here.
        "checks": {**details, "llm": llm, "stt": stt_health(runtime.stt)},
    }


@router.get("/health")
@router.head("/health", include_in_schema=False)  # monitoring tools probe with HEAD
async def health(runtime: RuntimeDep) -> Response:
    if runtime.health is None:  # not started by the lifespan (embedded use)
        report = await health_report(runtime)
        return JSONResponse(report, status_code=503 if report["status"] == "unhealthy" else 200)
    body, code = cached_body(runtime, runtime.health)
    return Response(body, status_code=code, media_type="application/json")


def cached_body(runtime: Runtime, checks: HealthChecks) -> tuple[bytes, int]:
    """The encoded report, rebuilt when anything in it changes or every 0.1 s (the ages)."""
    admission = runtime.admission
    key = (
        checks.runs,
        runtime.models.status_key(),
        None if runtime.stt is None else runtime.stt.status,
        runtime.telegram_state(),
        admission.throttled,
        admission.draining,
        admission.maintenance,
        admission.in_flight,
        runtime.db.replaced,
        int(time.monotonic() * 10),
    )
    hit = checks.encoded
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    report = build_report(runtime, checks)
    body = json.dumps(report, separators=(",", ":")).encode()
    code = 503 if report["status"] == "unhealthy" else 200
    checks.encoded = (key, body, code)
    return body, code


@router.get("/health/live")
@router.head("/health/live", include_in_schema=False)
async def live(runtime: RuntimeDep) -> JSONResponse:
    return JSONResponse({"status": "alive", "pid": runtime.pid})


async def start_health_checks(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """The first round runs before the server answers; then every interval."""
    checks = HealthChecks(runtime, interval_s=runtime.settings.health_check_interval_s)
    await checks.run_once()
    runtime.health = checks
    task = asyncio.ensure_future(checks.loop())
    stack.callback(task.cancel)


def status_line(report: dict[str, Any]) -> str:
    """One line for the /status chat command."""
    parts = [f"Vigil {report['status']}", f"up {_duration(report['uptime_s'])}"]
    parts.append(f"model {report['llm']}")
    parts.append(f"telegram {report['telegram']}")
    parts.append(f"database {report['database']}")
    if report["reasons"]:
        parts.append("(" + ", ".join(report["reasons"]) + ")")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
