"""``GET /restart/status``, ``POST /restart/force`` and the test-only ``/debug/block``.

The status holds the auto-restart configuration, the restart history and the
scheduled restarts, with the supervisor's per-child flap state. ``/debug/block``
exists only with ``VIGIL_DEBUG_HOOKS=true``: it blocks the event loop on purpose
so tests can prove the watchdogs work.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from core.errors import NotFound, VigilError
from core.http import check_admin
from core.restarts import counts_since, history, read_supervisor_state
from core.runtime import Runtime, RuntimeDep

router = APIRouter(tags=["restart"])


class AlreadyRestarting(VigilError):
    code = "already_restarting"
    status = 409


class ForceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detail: str = Field(default="", max_length=500)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _config(runtime: Runtime, supervisor: dict[str, Any]) -> dict[str, Any]:
    s = runtime.settings
    return {
        "enabled": bool(supervisor.get("supervised")),
        "supervised": bool(supervisor.get("supervised")),
        "supervisor_pid": supervisor.get("pid") if supervisor.get("supervised") else None,
        "grace_s": s.restart_grace_s,
        "backoff_initial_s": s.supervisor_backoff_initial_s,
        "backoff_max_s": s.supervisor_backoff_max_s,
        "backoff_reset_s": s.supervisor_backoff_reset_s,
        "flap_max": s.supervisor_flap_max,
        "flap_window_s": s.supervisor_flap_window_s,
        "watchdog_timeout_s": s.supervisor_watchdog_timeout_s,
        "schedule": s.restart_schedule,
        "schedule_max_postpone_s": s.restart_schedule_max_postpone_s,
        "governor_restart_mb": s.governor_restart_mb,
        "governor_hard_restart_mb": s.governor_hard_restart_mb,
    }


@router.get("/restart/status")
async def restart_status(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    supervisor = read_supervisor_state(runtime.settings.data_dir)
    total, entries = await history(runtime.db, limit=limit, offset=offset)
    for entry in entries:
        entry["at_iso"] = _iso(entry["at"])
    lifecycle = runtime.lifecycle
    scheduler = runtime.scheduled_restarts
    scheduled = scheduler.status() if scheduler is not None else None
    children = supervisor.get("children", {})
    for child in children.values():
        child["next_start_at_iso"] = _iso(child.get("next_start_at"))
    return {
        "auto_restart": _config(runtime, supervisor),
        "server": lifecycle.status(),
        "uptime_s": round(time.monotonic() - runtime.started_monotonic, 1),
        "next_scheduled_restart": scheduled["next_at_iso"] if scheduled else None,
        "scheduled_restart": scheduled,
        "children": children,
        "counts_24h": await counts_since(runtime.db, time.time() - 86400),
        "history": entries,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(entries) if offset + len(entries) < total else None,
    }


@router.post("/restart/force", dependencies=[Depends(check_admin)], status_code=202)
async def restart_force(runtime: RuntimeDep, body: ForceIn | None = None) -> JSONResponse:
    lifecycle = runtime.lifecycle
    detail = body.detail if body is not None else ""
    in_flight = runtime.admission.in_flight
    # Read before the restart starts: nothing after request_restart may fail.
    supervised = bool(read_supervisor_state(runtime.settings.data_dir).get("supervised"))
    if not lifecycle.request_restart("forced", detail or "POST /restart/force"):
        raise AlreadyRestarting(
            f"a {lifecycle.reason} restart is already under way", state=lifecycle.state
        )
    body_out: dict[str, Any] = {
        "restarting": True,
        "reason": "forced",
        "in_flight_turns": in_flight,
        "grace_s": lifecycle.grace_s,
        "supervised": supervised,
    }
    if not supervised:
        body_out["warning"] = (
            "no supervisor runs this server: it will exit and not come back by itself "
            "(start Vigil with scripts/start.sh, or under systemd)"
        )
    return JSONResponse(body_out, status_code=202)


@router.post("/debug/block", dependencies=[Depends(check_admin)], include_in_schema=False)
async def debug_block(
    request: Request, runtime: RuntimeDep, seconds: Annotated[float, Query(gt=0, le=600)] = 5.0
) -> dict[str, Any]:
    if not runtime.settings.debug_hooks:
        raise NotFound(f"no such endpoint: POST {request.url.path}")
    # Blocking the loop is the whole point of this hook (watchdog tests).
    time.sleep(seconds)  # noqa: ASYNC251
    return {"blocked_s": seconds}
