"""IntegratedMonitoringSystem: the governor's loops and the effects of its decisions.

Every sample (``VIGIL_GOVERNOR_SAMPLE_INTERVAL_S``) a snapshot goes into the
history and :func:`monitoring.governor.decide` says what to do; this class
only does it. Health checks (log line, database counters) run every
``VIGIL_GOVERNOR_HEALTH_CHECK_INTERVAL_S``, optimisation (context pruning,
cache trimming) every ``VIGIL_GOVERNOR_OPTIMIZE_INTERVAL_S``, routine cleanup
(idle sessions out of memory) every ``VIGIL_GOVERNOR_CLEANUP_INTERVAL_S``.

Restart requests go through one hook, ``request_restart(reason, detail,
immediate=)`` (``immediate=True`` for the hard limit): the server's graceful
restart path, given at construction (``runtime.request_restart``); every
request is also recorded here and shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import VigilError
from core.runtime import RestartHook
from monitoring.alerts import PerformanceAlert
from monitoring.cleanup import RuntimeEffects
from monitoring.governor import (
    Action,
    Cleanup,
    GovernorMemo,
    RaiseAlert,
    RequestRestart,
    ResolveAlert,
    SetEmergency,
    Throttle,
    Unthrottle,
    decide,
)
from monitoring.health import snapshot_score
from monitoring.notifiers import AlertDispatcher
from monitoring.resources import ResourceMonitor
from monitoring.rules import Thresholds
from monitoring.snapshot import ResourceSnapshot
from monitoring.store import AlertStore

log = logging.getLogger(__name__)

NOTIFY_STALE = frozenset({"medium", "high", "critical"})


def _stale_alert(row: dict[str, Any]) -> PerformanceAlert:
    """A PerformanceAlert for a row a previous process left open."""
    try:
        snapshot = ResourceSnapshot.from_dict(json.loads(row.get("snapshot") or "{}"))
    except (ValueError, TypeError, AttributeError):
        snapshot = None
    raised_at = float(row["raised_at"])
    if snapshot is None:
        snapshot = ResourceSnapshot(raised_at, 0.0, 0.0, 0, 0, 0.0, (0, 0))
    return PerformanceAlert(
        alert_type=str(row["alert_type"]),
        severity=str(row["severity"]),
        message=f"closed at restart (was: {row['message']})",
        timestamp=raised_at,
        resource_snapshot=snapshot,
        recommended_action=str(row["recommended_action"] or ""),
        key=str(row["alert_type"]),
        id=int(row["id"]),
        resolved_at=row.get("resolved_at"),
    )


class IntegratedMonitoringSystem:
    """Unified monitoring and self-protection of one Vigil server process."""

    def __init__(
        self,
        *,
        settings: Any,
        monitor: ResourceMonitor,
        thresholds: Thresholds,
        effects: RuntimeEffects,
        store: AlertStore | None = None,
        dispatcher: AlertDispatcher | None = None,
        restart_hook: RestartHook | None = None,
        source: Callable[[], ResourceSnapshot] | None = None,
        clock: Callable[[], float] = time.time,
        queue_depth: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.thresholds = thresholds
        self.effects = effects
        self.store = store
        self.dispatcher = dispatcher or AlertDispatcher()
        self.restart_hook = restart_hook
        self.source = source or monitor.take
        self.clock = clock
        self.queue_depth = queue_depth
        self.task_queue: dict[str, Any] = {}
        self.memo = GovernorMemo()
        # When the server was restarted by the governor before this start (set by the
        # starter from the restarts table) and for how long such a restart counts:
        # from 2 recent ones on, decide() alerts instead of restarting yet again.
        self.governor_restarts_at: list[float] = []
        self.restart_memory_s = 1800.0
        self.active: dict[str, PerformanceAlert] = {}
        self.raised_total: Counter[str] = Counter()
        self.emergency_cleanups = 0
        self.last_cleanup: dict[str, Any] | None = None
        self.last_optimise: dict[str, Any] | None = None
        self.evicted_total = 0
        self.restart_requests: deque[dict[str, Any]] = deque(maxlen=20)
        self.restart_requests_total: Counter[str] = Counter()
        self.restarts_by_reason: dict[str, int] = {}
        self.tasks_by_status: dict[str, int] = {}
        self.samples = 0
        self.errors = 0
        self.last_snapshot_s = 0.0
        self.last_decide_s = 0.0
        self.started_at = clock()
        self.running = False

    def reload_thresholds(self, settings: Any) -> None:
        """SIGHUP: the thresholds from reloaded settings (alert states are kept)."""
        self.thresholds = Thresholds.from_settings(settings, self.monitor.budget)
        self.settings = settings

    # --- the sampling step ---------------------------------------------------------
    @property
    def history(self) -> list[ResourceSnapshot]:
        return self.monitor.history.items()

    @property
    def recent_restarts(self) -> int:
        """Governor restarts of the server that still count (they age out)."""
        now = self.clock()
        return sum(1 for at in self.governor_restarts_at if now - at <= self.restart_memory_s)

    @property
    def throttled(self) -> bool:
        return self.memo.throttled

    @property
    def emergency_mode(self) -> bool:
        return self.memo.emergency

    def latest(self) -> ResourceSnapshot:
        """The newest snapshot; one is taken now if none exists yet."""
        return self.monitor.history.latest or self.source()

    def health_score(self, s: ResourceSnapshot) -> float:
        """0-100 for one snapshot against this system's budget and session limit."""
        th = self.thresholds
        return snapshot_score(s, budget_mb=th.budget_mb, max_sessions=th.max_sessions)

    async def tick(self) -> list[Action]:
        """Take one snapshot, decide, act. Returns the actions (for tests and logs)."""
        started = time.perf_counter()
        snapshot = self.source()
        taken = time.perf_counter()
        self.monitor.history.append(snapshot)
        self.samples += 1
        # Decisions see only this process's samples (the saved ones are for charts).
        mine = self.monitor.history.since(self.started_at)
        self.memo, actions = decide(
            mine,
            self.memo,
            th=self.thresholds,
            now=self.clock(),
            recent_restarts=self.recent_restarts,
        )
        # The governor's own cost, for /metrics (an operator can check the overhead).
        self.last_snapshot_s = taken - started
        self.last_decide_s = time.perf_counter() - taken
        for action in actions:
            try:
                await self._apply(action)
            except Exception:  # one failed effect must not stop the others
                self.errors += 1
                log.exception("governor action %r failed", action)
        return actions

    async def _apply(self, action: Action) -> None:
        if isinstance(action, RaiseAlert):
            await self._raise(action.alert)
        elif isinstance(action, ResolveAlert):
            await self._resolve(action.key)
        elif isinstance(action, Cleanup):
            await self.run_cleanup(aggressive=action.aggressive, reason=action.reason)
        elif isinstance(action, Throttle):
            log.warning(
                "throttling new turns: %s (Retry-After %g s)", action.reason, action.retry_after_s
            )
            self.effects.throttle(action.retry_after_s, action.reason)
            await self.effects.set_llm_reduced(True)
        elif isinstance(action, Unthrottle):
            log.warning("throttling ended: load stayed below the clear margin")
            self.effects.unthrottle()
            await self.effects.set_llm_reduced(self.memo.emergency)
        elif isinstance(action, SetEmergency):
            log.warning("emergency mode %s", "on" if action.on else "off")
            await self.effects.set_llm_reduced(action.on or self.memo.throttled)
        elif isinstance(action, RequestRestart):
            self.request_restart(action.reason, action.detail, immediate=action.immediate)

    async def _raise(self, alert: PerformanceAlert) -> None:
        if self.store is not None:
            try:
                alert.id = await self.store.insert(alert)
            except (VigilError, sqlite3.Error) as exc:
                # The alert still matters more than its row: keep it active and notify.
                log.warning("could not store alert %s: %s", alert.alert_type, exc)
                alert.id = None
        self.active[alert.key] = alert
        self.raised_total[alert.alert_type] += 1
        self.dispatcher.notify("raised", alert)

    async def condition(
        self,
        key: str,
        active: bool,
        *,
        alert_type: str,
        severity: str,
        message: str,
        action: str,
    ) -> None:
        """An alert for a condition outside the resource rules (the model down, writes
        failing): raised once while ``active``, resolved when it is not any more."""
        if active and key not in self.active:
            alert = PerformanceAlert(
                alert_type, severity, message, self.clock(), self.latest(), action, key=key
            )
            log.warning("alert %s: %s", alert_type, message)
            await self._raise(alert)
        elif not active and key in self.active:
            log.warning("alert %s resolved", alert_type)
            await self._resolve(key)

    async def close_stale(self, now: float) -> list[PerformanceAlert]:
        """Close the alerts a previous process left open and notify "resolved" for them."""
        if self.store is None:
            return []
        closed = [_stale_alert(row) for row in await self.store.close_stale(now)]
        for alert in closed:
            if alert.severity in NOTIFY_STALE:
                self.dispatcher.notify("resolved", alert)
        return closed

    async def _resolve(self, key: str) -> None:
        alert = self.active.pop(key, None)
        if alert is None:
            return
        alert.resolved_at = self.clock()
        if self.store is not None and alert.id is not None:
            try:
                await self.store.resolve(alert.id, alert.resolved_at)
            except (VigilError, sqlite3.Error) as exc:  # close_stale closes it at next start
                log.warning("could not store the resolution of %s: %s", alert.alert_type, exc)
        self.dispatcher.notify("resolved", alert)

    # --- effects callable from routes too ----------------------------------------------
    async def run_cleanup(self, *, aggressive: bool, reason: str) -> dict[str, Any]:
        log.warning("emergency cleanup (%s%s)", reason, ", aggressive" if aggressive else "")
        result = await self.effects.cleanup(aggressive=aggressive)
        self.emergency_cleanups += 1
        result.update(at=self.clock(), reason=reason)
        self.last_cleanup = result
        log.warning(
            "emergency cleanup freed %.1f MB (%s sessions evicted, %s turns folded)",
            result["freed_mb"],
            result["evicted_sessions"],
            result["pruned_turns"],
        )
        return result

    def request_restart(self, reason: str, detail: str, *, immediate: bool = False) -> bool:
        """Record a restart request and pass it to the restart hook, if one is set."""
        hook = self.restart_hook
        accepted: bool | None = None
        if hook is not None:
            try:
                accepted = bool(hook(reason, detail, immediate=immediate))
            except Exception:  # the hook is someone else's code; never crash the loop
                log.exception("restart hook failed for %s", reason)
                accepted = False
        entry = {
            "at": self.clock(),
            "reason": reason,
            "detail": detail,
            "immediate": immediate,
            "hook": hook is not None,
            "accepted": accepted,
        }
        self.restart_requests.appendleft(entry)
        self.restart_requests_total[reason] += 1
        log.critical(
            "restart requested (%s%s): %s", reason, ", immediate" if immediate else "", detail
        )
        return bool(accepted)

    # --- periodic jobs -----------------------------------------------------------------
    async def optimise(self) -> dict[str, Any]:
        self.last_optimise = {**await self.effects.optimise(), "at": self.clock()}
        return self.last_optimise

    async def routine_cleanup(self) -> int:
        evicted = self.effects.evict_idle()
        self.evicted_total += evicted
        if evicted:
            log.info("%d idle session(s) left memory (history stays in the database)", evicted)
        return evicted

    async def refresh_counters(self) -> None:
        if self.store is not None:
            self.restarts_by_reason = await self.store.restarts_count()
            self.tasks_by_status = await self.store.task_counts()
        if self.queue_depth is not None:
            # Huey's storage is blocking I/O (SQLite file or Redis): keep it off the loop.
            try:
                self.task_queue = await asyncio.wait_for(asyncio.to_thread(self.queue_depth), 5.0)
            except TimeoutError:
                self.task_queue = {"error": "the task queue did not answer within 5 s"}

    async def health_check(self) -> None:
        s = self.latest()
        await self.refresh_counters()
        log.info(
            "health %.1f: memory %.0f MB (%.1f%% of %.0f MB, %s), cpu %.0f%%, sessions %d, "
            "loop lag %.0f ms, alerts %d%s",
            self.health_score(s),
            s.memory_mb,
            100 * s.memory_mb / self.thresholds.budget_mb,
            self.thresholds.budget_mb,
            self.thresholds.budget_source,
            s.cpu_percent,
            s.active_sessions,
            s.loop_lag_ms,
            len(self.active),
            ", throttled" if self.throttled else "",
        )

    # --- loops ------------------------------------------------------------------------
    async def _every(self, interval: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:  # a loop boundary: log, count, carry on
                self.errors += 1
                log.exception("governor %s failed", name)

    def start(
        self, extra: list[Callable[[], Awaitable[Any]]] | None = None
    ) -> list[asyncio.Task[Any]]:
        """Start the loops; the caller cancels the returned tasks on shutdown."""
        s = self.settings
        self.monitor.history.append(self.source())  # primes CPU readings; decides nothing
        jobs: list[tuple[float, Callable[[], Awaitable[Any]], str]] = [
            (s.governor_sample_interval_s, self.tick, "sample"),
            (s.governor_health_check_interval_s, self.health_check, "health check"),
            (s.governor_optimize_interval_s, self.optimise, "optimisation"),
            (s.governor_cleanup_interval_s, self.routine_cleanup, "cleanup"),
        ]
        tasks = [asyncio.ensure_future(self._every(i, job, name)) for i, job, name in jobs]
        tasks += [asyncio.ensure_future(job()) for job in extra or []]
        self.running = True
        return tasks
