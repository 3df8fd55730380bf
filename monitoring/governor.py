"""The governor's decisions: ``decide(history, memo, th=..., now=...)``. Pure.

It returns a new memo and a list of actions; :mod:`monitoring.system` only
carries the actions out. The escalation ladder (seed 003, SPEC):

- ``memory_warning`` (cleanup level, sustained) -> emergency cleanup, at most
  once per cooldown; after a settle delay the history shows what it freed. A
  cleanup that freed too little (or three in a row that left memory above
  the level) escalates to one restart request instead of cleaning again.
- ``memory_high`` or a low health score -> emergency mode: aggressive cleanup
  and lowered LLM concurrency.
- ``memory_critical`` -> graceful restart request; ``memory_hard_limit`` ->
  immediate restart request; ``cpu_critical`` (throttled for 10 x sustain)
  -> graceful restart request with reason ``governor_cpu``.
- ``cpu_throttle`` (own CPU, loop lag or own cgroup's CPU pressure) ->
  throttle new turns until the clear condition holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from monitoring.alerts import PerformanceAlert, describe, flapping_alert
from monitoring.hysteresis import FLAP_END, FLAPPING, RAISED, RESOLVED, AlertState, step
from monitoring.rules import RULES, RULES_BY_KEY, Reading, Thresholds, evaluate
from monitoring.snapshot import ResourceSnapshot

EMERGENCY_KEYS = frozenset({"memory_high", "memory_restart", "memory_hard", "health_low"})
RESTART_ON_RAISE = {
    "memory_restart": ("governor_memory", False),
    "memory_hard": ("governor_memory", True),
    "cpu_critical": ("governor_cpu", False),
}


# --- actions ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RaiseAlert:
    alert: PerformanceAlert


@dataclass(frozen=True, slots=True)
class ResolveAlert:
    key: str


@dataclass(frozen=True, slots=True)
class Cleanup:
    aggressive: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Throttle:
    retry_after_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Unthrottle:
    pass


@dataclass(frozen=True, slots=True)
class SetEmergency:
    on: bool


@dataclass(frozen=True, slots=True)
class RequestRestart:
    reason: str  # governor_memory | governor_cpu
    detail: str
    immediate: bool = False


Action = RaiseAlert | ResolveAlert | Cleanup | Throttle | Unthrottle | SetEmergency | RequestRestart


# --- memo ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CleanupMemo:
    last_at: float | None = None
    verify_at: float | None = None
    before_mb: float = 0.0
    above_in_a_row: int = 0
    escalated: bool = False
    last_freed_mb: float | None = None


@dataclass(frozen=True, slots=True)
class GovernorMemo:
    alerts: Mapping[str, AlertState] = field(default_factory=dict)
    cleanup: CleanupMemo = field(default_factory=CleanupMemo)
    throttled: bool = False
    emergency: bool = False

    def firing(self) -> set[str]:
        return {key for key, state in self.alerts.items() if state.is_firing}


def _alert(rule_key: str, reading: Reading, *, s: ResourceSnapshot, th: Thresholds) -> RaiseAlert:
    rule = RULES_BY_KEY[rule_key]
    return RaiseAlert(
        PerformanceAlert(
            alert_type=rule.alert_type,
            severity=rule.severity,
            message=describe(rule, reading, snapshot=s, th=th),
            timestamp=s.timestamp,
            resource_snapshot=s,
            recommended_action=rule.recommended_action,
            key=rule.key,
        )
    )


def _rule_actions(
    key: str, events: list[str], *, reading: Reading, s: ResourceSnapshot, th: Thresholds
) -> list[Action]:
    actions: list[Action] = []
    for event in events:
        if event == RAISED:
            raised = _alert(key, reading, s=s, th=th)
            actions.append(raised)
            if key in RESTART_ON_RAISE:
                reason, immediate = RESTART_ON_RAISE[key]
                actions.append(RequestRestart(reason, raised.alert.message, immediate))
        elif event == RESOLVED:
            actions.append(ResolveAlert(key))
        elif event == FLAPPING:
            actions.append(RaiseAlert(flapping_alert(RULES_BY_KEY[key], s, th=th)))
        elif event == FLAP_END:
            actions.append(ResolveAlert(f"{key}:flapping"))
    return actions


def plan_cleanup(
    memo: CleanupMemo,
    s: ResourceSnapshot,
    *,
    wanted: bool,
    aggressive: bool,
    th: Thresholds,
    now: float,
) -> tuple[CleanupMemo, list[Action]]:
    """Emergency cleanup with cooldown, settle-then-measure and escalation."""
    if memo.verify_at is not None:
        if now < memo.verify_at:
            return memo, []
        freed = memo.before_mb - s.memory_mb
        helped = freed >= max(th.min_freed_mb, th.min_freed_fraction * memo.before_mb)
        above = s.memory_mb >= th.cleanup_mb
        in_a_row = memo.above_in_a_row + 1 if above else 0
        memo = replace(memo, verify_at=None, last_freed_mb=freed, above_in_a_row=in_a_row)
        if above and (not helped or in_a_row >= th.max_cleanups_above):
            detail = (
                f"emergency cleanup freed {freed:.0f} MB ({memo.before_mb:.0f} -> "
                f"{s.memory_mb:.0f} MB), still above {th.cleanup_mb:.0f} MB; "
                "restarting instead of cleaning again"
            )
            return replace(memo, escalated=True), [RequestRestart("governor_memory", detail)]
    if not wanted:
        return replace(memo, above_in_a_row=0, escalated=False), []
    if memo.escalated:
        return memo, []
    if memo.last_at is not None and now - memo.last_at < th.cooldown_s:
        return memo, []
    reason = f"memory {s.memory_mb:.0f} MB >= {th.cleanup_mb:.0f} MB"
    memo = replace(memo, last_at=now, verify_at=now + th.settle_s, before_mb=s.memory_mb)
    return memo, [Cleanup(aggressive, reason)]


def decide(
    history: Sequence[ResourceSnapshot], memo: GovernorMemo, *, th: Thresholds, now: float
) -> tuple[GovernorMemo, list[Action]]:
    """Everything the governor should do after the newest snapshot."""
    if not history or not history[-1].primed:
        return memo, []  # the first sample's CPU reading is meaningless
    s = history[-1]
    readings = evaluate(history, th, now)
    alerts = dict(memo.alerts)
    actions: list[Action] = []
    for rule in RULES:
        reading = readings[rule.key]
        state, events = step(
            alerts.get(rule.key, AlertState()), reading.level, now=now, timing=th.timing(rule.key)
        )
        alerts[rule.key] = state
        actions += _rule_actions(rule.key, events, reading=reading, s=s, th=th)
    memo = replace(memo, alerts=alerts)
    firing = memo.firing()

    emergency = bool(firing & EMERGENCY_KEYS)
    cleanup, more = plan_cleanup(
        memo.cleanup,
        s,
        # firing alone is not enough: a resolving alert's memory is already low
        wanted=bool(firing & {"memory_cleanup", "memory_high"}) and s.memory_mb >= th.cleanup_mb,
        aggressive=emergency,
        th=th,
        now=now,
    )
    actions += more
    if emergency != memo.emergency:
        actions.append(SetEmergency(emergency))
    throttled = "throttle" in firing
    if throttled != memo.throttled:
        reason = RULES_BY_KEY["throttle"].alert_type
        actions.append(Throttle(th.throttle_retry_after_s, reason) if throttled else Unthrottle())
    return replace(memo, cleanup=cleanup, emergency=emergency, throttled=throttled), actions


def signal_states(memo: GovernorMemo) -> dict[str, str]:
    """Per-signal state for display: ok | pending | warning | critical."""
    rank = {"ok": 0, "pending": 1, "warning": 2, "critical": 3}
    states: dict[str, str] = {}
    for rule in RULES:
        state = memo.alerts.get(rule.key, AlertState())
        if state.is_firing:
            value = "critical" if rule.severity in ("high", "critical") else "warning"
        elif state.phase.value == "pending":
            value = "pending"
        else:
            value = "ok"
        current = states.get(rule.signal, "ok")
        states[rule.signal] = value if rank[value] > rank[current] else current
    return states
