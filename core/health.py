"""Health endpoints: ``/health`` (readiness, seed 003's shape) and ``/health/live``.

``/health/live`` checks no dependency (Kubernetes' rule): it answers while the
event loop runs. ``/health`` checks the database and reports the model and
Telegram; a down model only makes Vigil ``degraded``, never ``unhealthy``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core import __version__
from core.restarts import read_supervisor_state

router = APIRouter(tags=["health"])


async def health_report(runtime: Any) -> dict[str, Any]:
    """The /health body; also used by /status and the CLI."""
    started = time.perf_counter()
    try:
        await runtime.db.ping()
        database = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # any storage failure makes us unhealthy, reported not raised
        database = {"status": "error", "detail": str(exc)[:200]}
    llm_status = runtime.llm.status
    llm = {
        "status": llm_status.state,
        "url": runtime.llm.display_url,
        "model": runtime.llm.model,
        "detail": llm_status.detail,
        "checked_at": llm_status.checked_at or None,
        "latency_ms": llm_status.latency_ms,
    }
    telegram = runtime.telegram_state()
    status = "healthy"
    reasons: list[str] = []
    if llm["status"] != "ok":
        status = "degraded"
        reasons.append(f"llm {llm['status']}")
    if telegram not in ("connected", "not_configured", "starting"):
        status = "degraded"
        reasons.append(f"telegram_{telegram}")
    if runtime.admission.throttled:
        status = "degraded"
        reasons.append("throttled")
    for name in failed_children(runtime.settings.data_dir):
        status = "degraded"  # e.g. the worker hit the flap limit: no backups any more
        reasons.append(f"{name} failed (restart limit reached; see /restart/status)")
    if database["status"] != "ok":
        status = "unhealthy"
        reasons.append("database error")
    if runtime.admission.draining:
        status = "unhealthy"
        reasons.append(f"draining ({runtime.admission.drain_reason})")
    return {
        "status": status,
        "telegram": telegram,
        "database": database["status"],
        "llm": llm["status"],
        "uptime_s": round(time.monotonic() - runtime.started_monotonic, 1),
        "version": __version__,
        "reasons": reasons,
        "in_flight_turns": runtime.admission.in_flight,
        "checks": {"database": database, "llm": llm},
    }


def failed_children(data_dir: Path) -> list[str]:
    """Children the supervisor gave up on (flap limit), when we run under it."""
    state = read_supervisor_state(data_dir)
    children = state.get("children") if state.get("supervised") else None
    if not isinstance(children, dict):
        return []
    return sorted(
        name
        for name, child in children.items()
        if isinstance(child, dict) and child.get("state") == "failed"
    )


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    report = await health_report(request.app.state.vigil)
    code = 503 if report["status"] == "unhealthy" else 200
    return JSONResponse(report, status_code=code)


@router.get("/health/live")
async def live(request: Request) -> dict[str, Any]:
    runtime = request.app.state.vigil
    return {"status": "alive", "pid": runtime.pid}


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
