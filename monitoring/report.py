"""The bodies of /resources/status, /resources/history and /sessions/report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitoring.alert_json import iso
from monitoring.governor import FUTILE_TYPE, signal_states
from monitoring.health import memory_percent, recommendations
from monitoring.snapshot import downsample

if TYPE_CHECKING:
    from monitoring.system import IntegratedMonitoringSystem


def _external(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "key": f"stored:{row['id']}",
        "raised_at": iso(row["raised_at"]),
        "timestamp": row["raised_at"],
    }


def status(
    system: IntegratedMonitoringSystem,
    recent: list[dict[str, Any]],
    *,
    external: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status report: ``health``, ``emergency``, limits, signals and history.

    ``external``: open alerts others stored (the supervisor's flap limit), shown
    with the governor's own in ``health.alerts``.
    """
    s = system.latest()
    th = system.thresholds
    score = system.health_score(s)
    signals = signal_states(system.memo)
    restart_pending = bool(system.restart_requests) and any(
        r["accepted"] is not False for r in system.restart_requests
    )
    monitor = system.monitor
    return {
        "health": {
            "current_resources": {
                "memory_mb": round(s.memory_mb, 1),
                "cpu_percent": round(s.cpu_percent, 1),
                "active_sessions": s.active_sessions,
                "memory_utilization_percent": round(memory_percent(s, th.budget_mb), 1),
            },
            "health_score": score,
            "alerts": [a.to_dict(with_snapshot=False) for a in system.active.values()]
            + [_external(row) for row in external or []],
            "recommendations": [
                f"{row['alert_type']}: {row['recommended_action']}"
                for row in external or []
                if row.get("recommended_action")
            ]
            + [  # restarting did not help: what the operator should do comes first
                f"{a.alert_type}: {a.recommended_action}"
                for a in system.active.values()
                if a.alert_type == FUTILE_TYPE
            ]
            + recommendations(
                signals,
                score=score,
                throttled=system.throttled,
                restart_pending=restart_pending,
            ),
            "signals": signals,
        },
        "emergency": {
            "emergency_mode": system.emergency_mode,
            "cpu_throttling": system.throttled,
            "emergency_cleanups": system.emergency_cleanups,
            "last_cleanup": system.last_cleanup,
            "restart_requests": list(system.restart_requests),
            # governor restarts of the server that still count (2+: no more restarts)
            "recent_governor_restarts": system.recent_restarts,
        },
        "limits": {
            "memory_budget_mb": round(monitor.budget.mb, 1),
            "memory_budget_source": monitor.budget.source,
            "memory_budget_detail": monitor.budget.detail,
            "cpu_cores": monitor.cpu.cores,
            "cpu_source": monitor.cpu.source,
            "pressure_scope": monitor.pressure.scope,
            "thresholds": th.to_dict(),
        },
        "snapshot": s.to_dict(),
        "recent_alerts": recent,
        "governor": {
            "running": system.running,
            "samples": system.samples,
            "history_points": len(system.monitor.history),
            "history_capacity": system.monitor.history.maxlen,
            "errors": system.errors,
            "last_optimise": system.last_optimise,
            "idle_sessions_evicted": system.evicted_total,
        },
    }


def history(system: IntegratedMonitoringSystem, *, minutes: float, points: int) -> dict[str, Any]:
    """Chart data: a downsampled slice of the history ring with the thresholds."""
    items = system.history
    if items:
        items = [x for x in items if x.timestamp >= items[-1].timestamp - minutes * 60]
    th = system.thresholds
    return {
        "interval_s": system.settings.governor_sample_interval_s,
        "count": len(items),
        "points": [
            {
                "t": round(x.timestamp, 3),
                "memory_mb": round(x.memory_mb, 1),
                "server_memory_mb": round(x.server_memory_mb, 1),
                "cpu_percent": round(x.cpu_percent, 1),
                "server_cpu_percent": round(x.server_cpu_percent, 1),
                "loop_lag_ms": round(x.loop_lag_ms, 1),
                "active_sessions": x.active_sessions,
                "in_flight_turns": x.in_flight_turns,
                "health_score": system.health_score(x),
                "cpu_pressure": x.cpu_pressure,
            }
            for x in downsample(items, points)
        ],
        "thresholds": {
            "memory_budget_mb": round(th.budget_mb, 1),
            "cleanup_mb": round(th.cleanup_mb, 1),
            "high_mb": round(th.high_mb, 1),
            "restart_mb": round(th.restart_mb, 1),
            "hard_restart_mb": round(th.hard_restart_mb, 1),
            "throttle_cpu_percent": th.throttle_cpu_percent,
            "loop_lag_ms": th.loop_lag_ms,
            "health_score_low": th.score_low,
        },
    }


def sessions(system: IntegratedMonitoringSystem, *, detailed: bool, limit: int) -> dict[str, Any]:
    """Per-session activity; chat ids and sizes only with the admin token."""
    now = system.clock()
    rows = system.effects.sessions(now)
    body: dict[str, Any] = {
        "cached_sessions": len(rows),
        "active_sessions": sum(1 for r in rows if r["active"]),
        "in_flight_turns": system.effects.in_flight(),
        "context_messages": sum(r["context_messages"] for r in rows),
        "memory_estimate_bytes": sum(r["memory_estimate_bytes"] for r in rows),
        "idle_evict_after_s": system.settings.governor_session_idle_s,
        "max_sessions": system.thresholds.max_sessions,
        "turns": system.effects.turn_stats(),
    }
    if detailed:
        body["sessions"] = rows[:limit]
    else:
        body["detail"] = "send 'Authorization: Bearer <admin token>' for per-session rows"
    return body
