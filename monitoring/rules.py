"""Thresholds and alert rules: where each snapshot stands against each rule. Pure.

The cleanup, high and restart levels read the server process's own memory
(``ResourceSnapshot.decision_memory_mb``): those actions only change the
server. The hard limit, the health score and the leak trend read the whole
tree's (supervisor, server, worker), which is what the budget holds.

Memory thresholds are absolute (SPEC's 600/800/900/1000 MB ladder) but are
scaled down proportionally when the memory budget (cgroup limit or RAM) is
smaller than the hard limit allows, so a 512 MB container still cleans up
before the kernel's OOM killer acts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.config import Settings
from monitoring.health import snapshot_score
from monitoring.hysteresis import Level, Timing
from monitoring.limits import MemoryBudget
from monitoring.snapshot import ResourceSnapshot

# Keep the hard limit this far under the budget (the kernel needs headroom).
BUDGET_HEADROOM = 0.95


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number the governor decides with, resolved once from Settings."""

    budget_mb: float
    budget_source: str
    cleanup_mb: float
    high_mb: float
    restart_mb: float
    hard_restart_mb: float
    scale: float
    throttle_cpu_percent: float
    cpu_ceiling_percent: float
    max_sessions: int
    sample_interval_s: float
    sustain_s: float
    hold_s: float
    cooldown_s: float
    settle_s: float
    memory_margin: float = 0.10
    cpu_margin_percent: float = 10.0
    loop_lag_ms: float = 500.0
    cpu_pressure_percent: float = 40.0
    memory_pressure_percent: float = 20.0
    disk_percent: float = 90.0
    score_low: float = 60.0
    score_clear: float = 70.0
    session_load: float = 0.8
    leak_window_s: float = 1800.0
    leak_mb_per_h: float = 90.0
    leak_min_r2: float = 0.8
    min_freed_mb: float = 8.0
    min_freed_fraction: float = 0.05
    max_cleanups_above: int = 3
    flap_limit: int = 6
    flap_window_s: float = 900.0
    throttle_retry_after_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings, budget: MemoryBudget) -> Thresholds:
        hard = settings.governor_hard_restart_mb
        scale = min(1.0, BUDGET_HEADROOM * budget.mb / hard) if hard > 0 else 1.0
        sample = settings.governor_sample_interval_s
        sustain, hold = settings.governor_sustain_s, settings.governor_clear_hold_s
        restart = settings.governor_restart_mb * scale
        return cls(
            budget_mb=budget.mb,
            budget_source=budget.source,
            cleanup_mb=settings.governor_cleanup_mb * scale,
            high_mb=settings.governor_high_mb * scale,
            restart_mb=restart,
            hard_restart_mb=hard * scale,
            scale=scale,
            throttle_cpu_percent=settings.governor_throttle_cpu_percent,
            cpu_ceiling_percent=settings.governor_cpu_ceiling_percent,
            max_sessions=settings.governor_max_sessions,
            sample_interval_s=sample,
            sustain_s=sustain,
            hold_s=hold,
            cooldown_s=settings.governor_cleanup_cooldown_s,
            settle_s=max(2 * sample, min(10.0, settings.governor_cleanup_cooldown_s / 2)),
            leak_window_s=min(1800.0, settings.governor_history_s),
            leak_mb_per_h=max(20.0, 0.1 * restart),
            flap_window_s=max(10 * sample, 5 * (sustain + hold)),
            throttle_retry_after_s=max(5.0, 2 * sample),
        )

    def timing(self, key: str) -> Timing:
        sustain = self.sustain_s
        if key == "memory_hard":  # the hard limit acts within a few samples
            sustain = min(sustain, 2 * self.sample_interval_s)
        elif key == "cpu_critical":  # restart only after throttling failed for long
            sustain = max(10 * sustain, 10 * self.sample_interval_s)
        return Timing(sustain, self.hold_s, self.flap_window_s, self.flap_limit)

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            name: round(value, 2) if isinstance(value, float) else value
            for name, value in ((f, getattr(self, f)) for f in self.__slots__)
        }


@dataclass(frozen=True, slots=True)
class Rule:
    key: str
    alert_type: str
    severity: str  # low | medium | high | critical
    signal: str  # memory | trend | health | cpu | loop_lag | sessions | disk | pressure
    recommended_action: str


RULES: tuple[Rule, ...] = (
    Rule("memory_cleanup", "memory_warning", "medium", "memory", "emergency cleanup"),
    Rule(
        "memory_high",
        "memory_high",
        "high",
        "memory",
        "high-memory response: emergency mode, aggressive cleanup, lower LLM concurrency",
    ),
    Rule("memory_restart", "memory_critical", "critical", "memory", "graceful restart"),
    Rule("memory_hard", "memory_hard_limit", "critical", "memory", "immediate restart"),
    Rule(
        "memory_trend",
        "memory_leak",
        "medium",
        "trend",
        # no restart here: the graceful restart comes only at the restart level
        "report the leak; plan a restart before the restart level is reached",
    ),
    Rule("health_low", "health_degraded", "high", "health", "high-memory response; check load"),
    Rule("cpu_high", "cpu_spike", "medium", "cpu", "watch; throttling starts at the limit"),
    Rule("throttle", "cpu_throttle", "high", "cpu", "throttle new turns, lower LLM concurrency"),
    Rule("cpu_critical", "cpu_critical", "critical", "cpu", "graceful restart"),
    Rule("loop_lag", "loop_lag", "high", "loop_lag", "throttle new turns; find what blocks"),
    Rule("sessions", "session_overflow", "medium", "sessions", "clean up inactive sessions"),
    Rule("disk", "disk_full", "high", "disk", "free disk space in the data directory"),
    Rule("cpu_pressure", "cpu_pressure", "low", "pressure", "none (host is busy)"),
    Rule("memory_pressure", "memory_pressure", "medium", "pressure", "free memory on the host"),
)
RULES_BY_KEY = {rule.key: rule for rule in RULES}


@dataclass(frozen=True, slots=True)
class Reading:
    level: Level
    value: float
    limit: float


def cpu_clear_level(limit: float, margin: float) -> float:
    """Where a CPU alert at ``limit`` percent clears: ``margin`` points under it,
    but never more than a fifth of the limit, so a low limit (10 % or less) still
    has a reachable clear level above zero (10 -> 8, 5 -> 4, 85 -> 75)."""
    return limit - min(margin, limit / 5)


def _above(value: float | None, raise_at: float, clear_at: float) -> Reading:
    if value is None:
        return Reading(Level.UNKNOWN, math.nan, raise_at)
    if value >= raise_at:
        return Reading(Level.RAISE, value, raise_at)
    return Reading(Level.CLEAR if value < clear_at else Level.BETWEEN, value, raise_at)


def memory_slope(
    history: Sequence[ResourceSnapshot], now: float, window_s: float
) -> tuple[float, float, float]:
    """(MB per hour, r^2, covered seconds) of a least-squares line over the window."""
    points = [(s.timestamp, s.memory_mb) for s in history if now - s.timestamp <= window_s]
    if len(points) < 3:
        return 0.0, 0.0, 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    stt = sum((t - mean_t) ** 2 for t, _ in points)
    smm = sum((m - mean_m) ** 2 for _, m in points)
    stm = sum((t - mean_t) * (m - mean_m) for t, m in points)
    if stt <= 0:
        return 0.0, 0.0, 0.0
    slope = stm / stt
    r2 = (stm * stm) / (stt * smm) if smm > 0 else 0.0
    return slope * 3600.0, r2, points[-1][0] - points[0][0]


def _trend(history: Sequence[ResourceSnapshot], th: Thresholds, now: float) -> Reading:
    slope, r2, covered = memory_slope(history, now, th.leak_window_s)
    if covered < th.leak_window_s / 2:
        return Reading(Level.UNKNOWN, slope, th.leak_mb_per_h)
    if slope >= th.leak_mb_per_h and r2 >= th.leak_min_r2:
        return Reading(Level.RAISE, slope, th.leak_mb_per_h)
    level = Level.CLEAR if slope < th.leak_mb_per_h / 2 else Level.BETWEEN
    return Reading(level, slope, th.leak_mb_per_h)


def _throttle(s: ResourceSnapshot, th: Thresholds) -> Reading:
    """Our own CPU, our event loop's lag, or our cgroup's CPU pressure — not the host's."""
    cpu = max(s.cpu_percent, s.server_cpu_percent)
    own_pressure = s.cpu_pressure if s.pressure_scope == "cgroup" else None
    ratios = [
        cpu / th.throttle_cpu_percent,
        s.loop_lag_ms / th.loop_lag_ms,
        (own_pressure or 0.0) / th.cpu_pressure_percent,
    ]
    clear = [
        cpu < cpu_clear_level(th.throttle_cpu_percent, th.cpu_margin_percent),
        s.loop_lag_ms < th.loop_lag_ms / 2,
        (own_pressure or 0.0) < th.cpu_pressure_percent / 2,
    ]
    worst = max(ratios)
    if worst >= 1.0:
        return Reading(Level.RAISE, worst * 100, 100.0)
    return Reading(Level.CLEAR if all(clear) else Level.BETWEEN, worst * 100, 100.0)


def evaluate(history: Sequence[ResourceSnapshot], th: Thresholds, now: float) -> dict[str, Reading]:
    """A Reading for every rule key, from the newest snapshot (and the trend)."""
    s = history[-1]
    server_mb = s.decision_memory_mb
    keep = 1 - th.memory_margin
    score = snapshot_score(s, budget_mb=th.budget_mb, max_sessions=th.max_sessions)
    throttle = _throttle(s, th)
    load = s.active_sessions / th.max_sessions
    readings = {
        # cleanup/high/restart act on the server alone, so they read its own memory;
        # the hard limit guards the budget the whole tree shares (the OOM killer's view)
        "memory_cleanup": _above(server_mb, th.cleanup_mb, th.cleanup_mb * keep),
        "memory_high": _above(server_mb, th.high_mb, th.high_mb * keep),
        "memory_restart": _above(server_mb, th.restart_mb, th.restart_mb * keep),
        "memory_hard": _above(s.memory_mb, th.hard_restart_mb, th.hard_restart_mb * keep),
        "memory_trend": _trend(history, th, now),
        "health_low": _above(-score, -th.score_low + 1e-9, -th.score_clear),
        "cpu_high": _above(
            s.cpu_percent,
            th.cpu_ceiling_percent,
            cpu_clear_level(th.cpu_ceiling_percent, th.cpu_margin_percent),
        ),
        "throttle": throttle,
        "cpu_critical": throttle,
        "loop_lag": _above(s.loop_lag_ms, th.loop_lag_ms, th.loop_lag_ms / 2),
        "sessions": _above(load, th.session_load, th.session_load - 0.1),
        "disk": _above(s.disk_usage_percent, th.disk_percent, th.disk_percent - 5),
        "cpu_pressure": _above(s.cpu_pressure, 50.0, 25.0),
        "memory_pressure": _above(
            s.memory_pressure, th.memory_pressure_percent, th.memory_pressure_percent / 2
        ),
    }
    health = readings["health_low"]
    readings["health_low"] = Reading(health.level, score, th.score_low)
    return readings
