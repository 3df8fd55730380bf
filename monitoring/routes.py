"""HTTP routes of the monitoring system.

Open (read-only, no chat content): ``GET /resources/status``,
``GET /resources/history``, ``GET /metrics``, ``GET /dashboard`` and the
summary of ``GET /sessions/report``. Admin token: per-session rows of
``/sessions/report`` and ``POST /resources/cleanup``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.errors import VigilError
from core.http import check_admin
from monitoring import report
from monitoring.metrics import VigilRegistry, build_registry
from monitoring.system import IntegratedMonitoringSystem

log = logging.getLogger(__name__)
router = APIRouter(tags=["monitoring"])
DASHBOARD = Path(__file__).with_name("dashboard.html")


class MonitoringUnavailable(VigilError):
    code = "monitoring_unavailable"
    status = 503


def _system(request: Request) -> IntegratedMonitoringSystem:
    system = getattr(request.app.state.vigil, "monitoring", None)
    if system is None:
        raise MonitoringUnavailable("the monitoring system is not running", retry_after=5)
    return system


async def _stored(system: IntegratedMonitoringSystem) -> tuple[list[Any], list[Any]]:
    """(recent alerts, open alerts of others) from the database."""
    if system.store is None:
        return [], []
    try:
        since = system.monitor.root_started_at
        return await system.store.recent(20), await system.store.open_external(since=since)
    except VigilError as exc:  # a storage problem must not hide the live status
        log.warning("stored alerts unavailable: %s", exc.message)
        return [], []


@router.get("/resources/status")
async def resources_status(request: Request) -> dict[str, Any]:
    system = _system(request)
    recent, external = await _stored(system)
    return report.status(system, recent, external=external)


@router.get("/resources/history")
async def resources_history(
    request: Request,
    minutes: Annotated[float, Query(gt=0, le=24 * 60)] = 60,
    points: Annotated[int, Query(ge=2, le=5000)] = 360,
) -> dict[str, Any]:
    return report.history(_system(request), minutes=minutes, points=points)


@router.get("/sessions/report")
async def sessions_report(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    detailed = "authorization" in request.headers
    if detailed:
        check_admin(request)  # a wrong token is 403, not a silent summary
    return report.sessions(_system(request), detailed=detailed, limit=limit)


@router.post("/resources/cleanup", dependencies=[Depends(check_admin)])
async def resources_cleanup(request: Request, aggressive: bool = False) -> dict[str, Any]:
    system = _system(request)
    result = await system.run_cleanup(aggressive=aggressive, reason="POST /resources/cleanup")
    return {"cleanup": result, "emergency_cleanups": system.emergency_cleanups}


@router.get("/metrics")
@router.head("/metrics", include_in_schema=False)  # monitoring tools probe with HEAD
async def metrics(request: Request) -> Response:
    runtime = request.app.state.vigil
    system = runtime.monitoring
    if system is not None:
        try:
            await system.refresh_counters()
        except VigilError as exc:
            log.warning("metrics: database counters unavailable: %s", exc.message)
    registry = runtime.metrics_registry
    if registry is None:
        registry = runtime.metrics_registry = build_registry(runtime)
    if isinstance(registry, VigilRegistry):
        await registry.vigil.prepare()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))
