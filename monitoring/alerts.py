"""PerformanceAlert (what was crossed, how badly, what to do) and the texts that describe one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from monitoring.alert_json import alert_fields
from monitoring.rules import Reading, Rule, Thresholds
from monitoring.snapshot import ResourceSnapshot

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(slots=True)
class PerformanceAlert:
    """One raised alert; ``resolved_at`` is set when it clears."""

    alert_type: str  # memory_warning, cpu_spike, session_overflow, ...
    severity: str  # low | medium | high | critical
    message: str
    timestamp: float
    resource_snapshot: ResourceSnapshot
    recommended_action: str
    key: str = ""
    id: int | None = None
    resolved_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, with_snapshot: bool = True) -> dict[str, Any]:
        data = alert_fields(
            alert_type=self.alert_type,
            severity=self.severity,
            message=self.message,
            timestamp=self.timestamp,
            recommended_action=self.recommended_action,
            key=self.key,
            alert_id=self.id,
            resolved_at=self.resolved_at,
        )
        if with_snapshot:
            data["resource_snapshot"] = self.resource_snapshot.to_dict()
        return data


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}"


def _eta(mb_per_h: float, now_mb: float, limit_mb: float) -> str:
    if math.isnan(mb_per_h) or mb_per_h <= 0 or now_mb >= limit_mb:
        return ""
    return f" in about {(limit_mb - now_mb) / mb_per_h:.1f} h at this rate"


def describe(rule: Rule, reading: Reading, *, snapshot: ResourceSnapshot, th: Thresholds) -> str:
    """One line for the operator: what crossed which limit."""
    v, lim = _fmt(reading.value), _fmt(reading.limit)
    texts = {
        "memory": f"Vigil uses {v} MB (limit {lim} MB of a {th.budget_mb:.0f} MB budget "
        f"from {th.budget_source})",
        "trend": f"memory grows {v} MB/h over the last {th.leak_window_s / 60:.0f} min "
        f"(alert at {lim} MB/h); now {snapshot.memory_mb:.0f} MB, restart at "
        f"{th.restart_mb:.0f} MB{_eta(reading.value, snapshot.memory_mb, th.restart_mb)}",
        "health": f"health score {reading.value:.1f} is below {th.score_low:.0f}",
        "loop_lag": f"event loop lag {v} ms (limit {lim} ms)",
        "sessions": f"{snapshot.active_sessions} active sessions of {th.max_sessions} "
        f"(alert at {th.session_load:.0%})",
        "disk": f"data disk {v}% full (limit {lim}%)",
        "pressure": f"{rule.alert_type.replace('_', ' ')} {v}% (some avg10, "
        f"{snapshot.pressure_scope}; limit {lim}%)",
    }
    if rule.signal == "cpu":
        if rule.key == "cpu_high":
            return f"CPU {v}% of available CPUs (ceiling {lim}%)"
        return (
            f"load at {v}% of the throttle limit: CPU {snapshot.cpu_percent:.0f}% "
            f"(server {snapshot.server_cpu_percent:.0f}% of a core), loop lag "
            f"{snapshot.loop_lag_ms:.0f} ms"
        )
    return texts.get(rule.signal, f"{rule.key}: {v} (limit {lim})")


def flapping_alert(rule: Rule, snapshot: ResourceSnapshot, *, th: Thresholds) -> PerformanceAlert:
    return PerformanceAlert(
        alert_type="alert_flapping",
        severity="low",
        message=f"{rule.alert_type} keeps crossing its threshold ({th.flap_limit}+ flips in "
        f"{th.flap_window_s / 60:.0f} min); reported once",
        timestamp=snapshot.timestamp,
        resource_snapshot=snapshot,
        recommended_action="tune the threshold or VIGIL_GOVERNOR_SUSTAIN_S if this is normal",
        key=f"{rule.key}:flapping",
    )
