"""The monitoring starter: builds the IntegratedMonitoringSystem from settings + runtime.

Plugged into ``core/app.py``'s ``_default_starters``; it sets
``runtime.monitoring``, starts the loops and pushes their cancellation on the
lifespan's exit stack. With ``VIGIL_GOVERNOR_ENABLED=false`` the system is
built (status and metrics still answer) but no loop runs and nothing acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from core.errors import VigilError
from monitoring.backup_alerts import report_backups
from monitoring.cleanup import RuntimeEffects
from monitoring.governor import FUTILE_AFTER
from monitoring.metrics import build_registry, track_governor
from monitoring.notifiers import AlertDispatcher, TelegramNotifier, WebhookNotifier
from monitoring.resources import LoopLagProbe, ResourceMonitor, vigil_root_pid
from monitoring.rules import Thresholds
from monitoring.store import AlertStore
from monitoring.system import IntegratedMonitoringSystem

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)
TELEGRAM_ALERT_INTERVAL_S = 60.0
HISTORY_FILE = "resource_history.json"
RESTART_MEMORY_S = 1800.0


class _TelegramAlerts:
    """Finds a way to reach the Telegram admin chat once Telegram is up."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.notifier: TelegramNotifier | None = None

    def __call__(self) -> TelegramNotifier | None:
        if self.notifier is not None:
            return self.notifier
        gateway = self.runtime.telegram
        if gateway is None:
            return None
        send = getattr(gateway, "notify_admin", None)
        admin = self.runtime.settings.telegram_admin_id
        channel = self.runtime.telegram_channel  # the Telegram Channel adapter
        channel_send = getattr(channel, "send", None)
        if send is None and admin is not None and channel_send is not None:

            async def send(text: str) -> Any:
                return await channel_send(f"tg:{admin}", text)

        if send is None:
            return None
        self.notifier = TelegramNotifier(send, min_interval_s=TELEGRAM_ALERT_INTERVAL_S)
        return self.notifier


def build_monitoring(
    runtime: Runtime, *, probe: LoopLagProbe | None = None
) -> IntegratedMonitoringSystem:
    settings = runtime.settings
    effects = RuntimeEffects(runtime)
    probe = probe or LoopLagProbe()
    monitor = ResourceMonitor(
        memory_limit_mb=settings.governor_memory_limit_mb,
        data_dir=settings.data_dir,
        history_len=int(settings.governor_history_s / settings.governor_sample_interval_s) + 1,
        root_pid=vigil_root_pid(os.getpid(), settings.data_dir),
        sessions=effects.active_sessions,
        cached=effects.cached_sessions,
        in_flight=effects.in_flight,
        loop_lag_ms=probe.take_ms,
    )
    webhook = WebhookNotifier(settings.alert_webhook_url) if settings.alert_webhook_url else None
    return IntegratedMonitoringSystem(
        settings=settings,
        monitor=monitor,
        thresholds=Thresholds.from_settings(settings, monitor.budget),
        effects=effects,
        store=AlertStore(runtime.db),
        dispatcher=AlertDispatcher(webhook=webhook, telegram=_TelegramAlerts(runtime)),
        restart_hook=runtime.request_restart,
        queue_depth=runtime.queue_depth,
    )


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def start_monitoring(app: Any, runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Starter: ``runtime.monitoring``, the metrics registry, and the governor loops."""
    probe = LoopLagProbe()
    system = build_monitoring(runtime, probe=probe)
    runtime.monitoring = system
    if runtime.chat.budgets is not None:  # budget_total_80 / budget_total_exceeded
        runtime.chat.budgets.alert = system.condition
    runtime.metrics_registry = build_registry(runtime)
    track_governor(runtime, system)
    stack.push_async_callback(system.dispatcher.drain)  # also the stale "resolved" events
    stale = await system.close_stale(time.time())
    if stale:
        log.info("closed %d alert(s) left open by the previous run", len(stale))
    budget = system.monitor.budget
    log.info(
        "monitoring: memory budget %.0f MB (%s), thresholds %.0f/%.0f/%.0f/%.0f MB, %s",
        budget.mb,
        budget.source,
        system.thresholds.cleanup_mb,
        system.thresholds.high_mb,
        system.thresholds.restart_mb,
        system.thresholds.hard_restart_mb,
        "governor on" if runtime.settings.governor_enabled else "governor disabled",
    )
    if runtime.health is not None:  # the operator is told what /health reports
        runtime.health.after_round.append(lambda: report_conditions(system, runtime))
        runtime.health.after_round.append(lambda: report_backups(system, runtime))
    if not runtime.settings.governor_enabled:
        return
    _keep_history(system, runtime.settings, stack)
    await load_governor_restarts(system, runtime.settings, time.time())
    tasks = system.start(extra=[probe.run])
    stack.push_async_callback(_cancel, tasks)


async def load_governor_restarts(
    system: IntegratedMonitoringSystem, settings: Any, now: float
) -> int:
    """Give the system the server's governor restarts of the last flap window (>= 30 min).

    Read once at start: a new process does not remember why the previous one
    asked to be restarted, the ``restarts`` table does. They age out of the
    window while this process runs. Returns how many count now.
    """
    if system.store is None:
        return 0
    window = max(float(settings.supervisor_flap_window_s), RESTART_MEMORY_S)
    try:
        times = await system.store.recent_restarts(
            child="server", prefix="governor_", since=now - window
        )
    except (VigilError, sqlite3.Error) as exc:  # unknown: assume restarts still help
        log.warning("could not read the recent restarts: %s", exc)
        return 0
    system.governor_restarts_at, system.restart_memory_s = times, window
    if times:
        log.warning(
            "%d governor restart(s) of the server in the last %.0f min%s",
            len(times),
            window / 60,
            "; restarting does not help, the governor alerts instead"
            if len(times) >= FUTILE_AFTER
            else "",
        )
    return len(times)


def _keep_history(
    system: IntegratedMonitoringSystem, settings: Any, stack: contextlib.AsyncExitStack
) -> None:
    """Charts survive graceful restarts: the ring is saved at stop, loaded at start."""
    path = settings.data_dir / HISTORY_FILE
    loaded = system.monitor.history.load(path, newer_than=time.time() - settings.governor_history_s)
    if loaded:
        log.info("resource history: %d snapshot(s) from the previous run", loaded)

    def save() -> None:
        try:
            system.monitor.history.save(path)
        except OSError as exc:  # a full disk must not break the shutdown
            log.warning("could not save the resource history: %s", exc)

    stack.callback(save)  # runs after the loops are cancelled (LIFO)


async def report_conditions(system: IntegratedMonitoringSystem, runtime: Runtime) -> None:
    """After each round of health checks: alerts for a failing model and failing writes.

    The texts are Vigil's own (``LLMStatus.detail``, the storage error codes),
    never the model server's error body.
    """
    llm = runtime.llm
    status = llm.status
    await system.condition(
        "llm_unreachable",
        status.state in ("unreachable", "error"),
        alert_type="llm_unreachable",
        severity="high",
        message=(
            f"the language model at {llm.display_url} is failing "
            f"({status.code or status.state}: {status.detail}); chatters get a short "
            "'try again in a minute' reply"
        ),
        action="check the model server and VIGIL_LLM_BASE_URL / VIGIL_LLM_MODEL / "
        "VIGIL_LLM_API_KEY; logs/system.log has its own error text",
    )
    database = runtime.health.results.get("database") if runtime.health is not None else None
    failing = database is not None and database.status != "ok"
    code = database.reasons[0] if database is not None and database.reasons else "storage_error"
    await system.condition(
        "database_writes",
        failing,
        alert_type="database_write_failing",
        severity="critical",
        message=f"writes to the database fail ({code}); new messages cannot be stored",
        action="free disk space or fix the data directory's permissions (see /health)",
    )
