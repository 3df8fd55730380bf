"""The governor's decisions: ``decide(history, memo, th=..., now=...)``. Pure.

It returns a new memo and a list of actions; :mod:`monitoring.system` only
carries the actions out. The escalation ladder:

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
- ``recent_restarts`` >= 2 (governor restarts of the server just before
  this start): restarting did not help, so no restart is requested; one
  critical ``restart_not_helping`` alert tells the operator instead, while
  cleanup and throttling go on. Without this a server that is above the
  cleanup level right after start would restart every ~80 s forever, below
  the supervisor's flap limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from monitoring.alerts import PerformanceAlert, describe, flapping_alert
from monitoring.hysteresis import FLAP_END, FLAPPING, RAISED, RESOLVED, AlertState, step
from monitoring.rules import RULES, RULES_BY_KEY, Reading, Thresholds, evaluate
from monitoring.snapshot import ResourceSnapshot

# Rules that read the server's own memory (rules.evaluate); the rest read the tree's.
SERVER_MEMORY_KEYS = frozenset({"memory_cleanup", "memory_high", "memory_restart"})
EMERGENCY_KEYS = frozenset({"memory_high", "memory_restart", "memory_hard", "health_low"})
# Governor restarts of the server shortly before this start from which on a
# new restart is judged futile (the previous ones did not bring memory down).
FUTILE_AFTER = 2
FUTILE_TYPE = "restart_not_helping"
# While one of these fires, the "restart does not help" alert stays open.
PRESSING_KEYS = frozenset(
    {"memory_cleanup", "memory_high", "memory_restart", "memory_hard", "throttle", "cpu_critical"}
)
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
    futile_raised: bool = False

    def firing(self) -> set[str]:
        return {key for key, state in self.alerts.items() if state.is_firing}


def _alert(rule_key: str, reading: Reading, *, s: ResourceSnapshot, th: Thresholds) -> RaiseAlert:
    rule = RULES_BY_KEY[rule_key]
    message = describe(rule, reading, snapshot=s, th=th)
    if rule_key in SERVER_MEMORY_KEYS:  # say which number crossed the level
        message += f" (server process; whole tree {s.memory_mb:.0f} MB)"
    return RaiseAlert(
        PerformanceAlert(
            alert_type=rule.alert_type,
            severity=rule.severity,
            message=message,
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
    """Emergency cleanup with cooldown, settle-then-measure and escalation.

    Measured on the server's own memory: the cleanup only frees the server's.
    """
    mb = s.decision_memory_mb
    if memo.verify_at is not None:
        if now < memo.verify_at:
            return memo, []
        freed = max(0.0, memo.before_mb - mb)  # grown memory freed 0 MB, not "-0 MB"
        helped = freed >= max(th.min_freed_mb, th.min_freed_fraction * memo.before_mb)
        above = mb >= th.cleanup_mb
        in_a_row = memo.above_in_a_row + 1 if above else 0
        memo = replace(memo, verify_at=None, last_freed_mb=freed, above_in_a_row=in_a_row)
        if above and (not helped or in_a_row >= th.max_cleanups_above):
            detail = (
                f"emergency cleanup freed {freed:.0f} MB ({memo.before_mb:.0f} -> "
                f"{mb:.0f} MB), still above {th.cleanup_mb:.0f} MB; "
                "restarting instead of cleaning again"
            )
            return replace(memo, escalated=True), [RequestRestart("governor_memory", detail)]
    if not wanted:
        return replace(memo, above_in_a_row=0, escalated=False), []
    if memo.escalated:
        return memo, []
    if memo.last_at is not None and now - memo.last_at < th.cooldown_s:
        return memo, []
    reason = f"memory {mb:.0f} MB >= {th.cleanup_mb:.0f} MB"
    memo = replace(memo, last_at=now, verify_at=now + th.settle_s, before_mb=mb)
    return memo, [Cleanup(aggressive, reason)]


def decide(
    history: Sequence[ResourceSnapshot],
    memo: GovernorMemo,
    *,
    th: Thresholds,
    now: float,
    recent_restarts: int = 0,
) -> tuple[GovernorMemo, list[Action]]:
    """Everything the governor should do after the newest snapshot.

    ``recent_restarts``: governor restarts of the server recorded shortly
    before this process started (the starter reads them from ``restarts``).
    From :data:`FUTILE_AFTER` on, restarting evidently does not help, so a
    restart request becomes a critical alert for the operator instead.
    """
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
        wanted=bool(firing & {"memory_cleanup", "memory_high"})
        and s.decision_memory_mb >= th.cleanup_mb,
        aggressive=emergency,
        th=th,
        now=now,
    )
    actions += more
    memo = replace(memo, cleanup=cleanup)
    if recent_restarts >= FUTILE_AFTER:
        memo, actions = _instead_of_restarting(memo, actions, s=s, th=th, n=recent_restarts)
    if emergency != memo.emergency:
        actions.append(SetEmergency(emergency))
    throttled = "throttle" in firing
    if throttled != memo.throttled:
        reason = RULES_BY_KEY["throttle"].alert_type
        actions.append(Throttle(th.throttle_retry_after_s, reason) if throttled else Unthrottle())
    return replace(memo, emergency=emergency, throttled=throttled), actions


def _futile_alert(
    request: RequestRestart, *, s: ResourceSnapshot, th: Thresholds, n: int
) -> RaiseAlert:
    if request.reason == "governor_cpu":
        what = f"CPU load stays at the throttle limit after {n} restarts"
    else:
        limit = th.hard_restart_mb if request.immediate else th.cleanup_mb
        what = (
            f"memory stays above {limit:.0f} MB after {n} restarts (server "
            f"{s.decision_memory_mb:.0f} MB, whole tree {s.memory_mb:.0f} MB)"
        )
    return RaiseAlert(
        PerformanceAlert(
            alert_type=FUTILE_TYPE,
            severity="critical",
            message=f"restart does not help: {what}; not restarting again ({request.detail})",
            timestamp=s.timestamp,
            resource_snapshot=s,
            recommended_action=(
                "find what holds the memory/CPU right after start (large chats, model or "
                "cache settings, another process in the tree); raise VIGIL_GOVERNOR_*_MB if "
                "this size is normal; then restart by hand"
            ),
            key=FUTILE_TYPE,
        )
    )


def _instead_of_restarting(
    memo: GovernorMemo, actions: list[Action], *, s: ResourceSnapshot, th: Thresholds, n: int
) -> tuple[GovernorMemo, list[Action]]:
    """Restarting did not help: alert once, keep cleaning and throttling, never restart."""
    kept: list[Action] = []
    for action in actions:
        if not isinstance(action, RequestRestart):
            kept.append(action)
            continue
        if not memo.futile_raised:
            kept.append(_futile_alert(action, s=s, th=th, n=n))
            memo = replace(memo, futile_raised=True)
    # an escalation that did not restart must not stop the (cooled-down) cleanups
    memo = replace(memo, cleanup=replace(memo.cleanup, escalated=False))
    if memo.futile_raised and not memo.firing() & PRESSING_KEYS:
        kept.append(ResolveAlert(FUTILE_TYPE))
        memo = replace(memo, futile_raised=False)
    return memo, kept


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
