"""Health score (SPEC's formula, for display) and recommendation texts. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from monitoring.snapshot import ResourceSnapshot


def calculate_health_score(memory_percent: float, cpu_percent: float, session_load: float) -> float:
    """0-100 = 0.4 x memory health + 0.3 x CPU health + 0.3 x session health."""
    memory_health = max(0.0, 100.0 - memory_percent * 1.5)
    cpu_health = max(0.0, 100.0 - cpu_percent * 1.2)
    session_health = max(0.0, 100.0 - session_load * 100.0)
    return memory_health * 0.4 + cpu_health * 0.3 + session_health * 0.3


def memory_percent(snapshot: ResourceSnapshot, budget_mb: float) -> float:
    return 100.0 * snapshot.memory_mb / budget_mb if budget_mb > 0 else 0.0


def session_load(snapshot: ResourceSnapshot, max_sessions: int) -> float:
    return snapshot.active_sessions / max_sessions if max_sessions > 0 else 0.0


def snapshot_score(snapshot: ResourceSnapshot, *, budget_mb: float, max_sessions: int) -> float:
    return round(
        calculate_health_score(
            memory_percent(snapshot, budget_mb),
            snapshot.cpu_percent,
            session_load(snapshot, max_sessions),
        ),
        1,
    )


# What to tell the operator while a signal is not "ok".
_ADVICE = {
    "memory": "Memory is high: emergency cleanup runs automatically; check /sessions/report "
    "for large sessions, POST /resources/cleanup to clean now",
    "cpu": "CPU is high: new turns are throttled; lower VIGIL_LLM_CONCURRENCY or "
    "VIGIL_CHAT_QUEUE_LIMIT if this persists",
    "sessions": "Many active sessions: idle ones leave memory after "
    "VIGIL_GOVERNOR_SESSION_IDLE_S; raise VIGIL_GOVERNOR_MAX_SESSIONS only with more memory",
    "loop_lag": "The event loop is lagging: something blocks it; new turns are throttled",
    "disk": "The data disk is nearly full: free space or run a backup cleanup",
    "pressure": "The machine is short of CPU or memory (PSI); other processes compete with Vigil",
    "trend": "Memory keeps growing: a leak is likely; a restart is requested before the limit",
}


def recommendations(
    signals: Mapping[str, str],
    *,
    score: float,
    throttled: bool,
    restart_pending: bool,
) -> list[str]:
    """Human advice for /resources/status, most urgent first."""
    advice: list[str] = []
    if restart_pending:
        advice.append("A restart was requested by the governor; see GET /restart/status")
    order: Iterable[str] = ("memory", "trend", "cpu", "loop_lag", "sessions", "disk", "pressure")
    for name in order:
        if signals.get(name, "ok") in ("warning", "critical"):
            advice.append(_ADVICE[name])
    if throttled and not any("throttled" in a for a in advice):
        advice.append("New turns are throttled until load stays below the clear margin")
    if not advice:
        advice.append(
            "System performing well" if score >= 70 else "Health score is low; watch the trend"
        )
    return advice
