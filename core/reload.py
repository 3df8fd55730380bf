"""SIGHUP: reopen the log files and reload the settings that can change without a restart.

``kill -HUP`` the supervisor (it forwards the signal to its children) or any
Vigil process. Each process first reopens its log files (logrotate renamed
them: new files appear), then reads the settings again (environment, ``.env``,
``VIGIL_CONFIG_FILE``) and applies what it can while running:

- every process: :data:`EVERYWHERE` (log level and format);
- the server also :data:`SERVER_LIVE` (the Telegram allow-list and admin, the
  per-chat queue limit, the system prompt, the governor's thresholds).

Every other setting keeps its old value until a restart: the server logs which
changed and what they need — a server restart (``POST /restart/force``) or,
for :data:`FULL_STOP_START` (read by the supervisor or the worker), a full
``scripts/stop.sh && scripts/start.sh``. An invalid settings file keeps the
old settings: the server logs one error line (the supervisor and worker say
it only at DEBUG, so it is said once) and nothing stops.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import ENV_PREFIX, ConfigError, Settings, load_settings
from core.logs import reopen_logging

if TYPE_CHECKING:
    from core.chat import ChatService
    from core.runtime import Runtime

log = logging.getLogger(__name__)

EVERYWHERE = ("log_level", "log_json")
GOVERNOR_LIVE = (
    "governor_cleanup_mb",
    "governor_high_mb",
    "governor_restart_mb",
    "governor_hard_restart_mb",
    "governor_throttle_cpu_percent",
    "governor_cpu_ceiling_percent",
    "governor_max_sessions",
    "governor_sustain_s",
    "governor_clear_hold_s",
    "governor_cleanup_cooldown_s",
)
# The per-user limits (core/budgets.py): read at each turn.
LIMITS_LIVE = (
    "budget_user_tokens_day",
    "budget_user_tokens_month",
    "budget_total_tokens_day",
    "timezone",
    "rate_limit_user_per_min",
    "context_idle_reset_min",
)
SERVER_LIVE = (
    *EVERYWHERE,
    *LIMITS_LIVE,
    "telegram_allowed_users",
    "telegram_admin_id",
    "chat_queue_limit",
    "system_prompt",
    *GOVERNOR_LIVE,
)
# Read by the supervisor (its policy, paths, port) or the worker (schedule, queue,
# retention): a server restart does not apply them.
FULL_STOP_START = (
    "data_dir",
    "logs_dir",
    "host",
    "port",
    "config_file",
    "alert_webhook_url",
    "restart_grace_s",
    "supervisor_backoff_initial_s",
    "supervisor_backoff_max_s",
    "supervisor_backoff_reset_s",
    "supervisor_flap_max",
    "supervisor_flap_window_s",
    "supervisor_watchdog_timeout_s",
    "supervisor_stop_timeout_s",
    "supervisor_retry_failed_s",
    "huey_redis_url",
    "task_schedule",
    "backup_keep_hourly",
    "backup_keep_daily",
    "backup_keep_weekly",
    "backup_keep_monthly",
    "message_retention_days",
    "task_retention_days",
    "usage_retention_days",
)


def applies_on(name: str) -> str:
    """``reload`` (SIGHUP), ``server restart`` or ``full stop/start`` for a setting."""
    if name in SERVER_LIVE:
        return "reload"
    if name in FULL_STOP_START:
        return "full stop/start"
    return "server restart"


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def changed(old: Settings, new: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Settings whose values differ (SecretStr compares by value, never shown)."""
    fields = list(names) if names is not None else list(type(old).model_fields)
    return [name for name in fields if getattr(old, name) != getattr(new, name)]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:37] + "...")
    return "(none)" if value is None else str(value)


@dataclass
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    needs_stop_start: list[str] = field(default_factory=list)
    error: str | None = None


def reload_settings(
    current: Settings,
    *,
    process: str,
    live: tuple[str, ...],
    load: Callable[[], Settings] = load_settings,
    report_others: bool = True,
) -> tuple[Settings | None, ReloadResult]:
    """Reopen the logs, read the settings again and set the ``live`` ones on ``current``.

    Returns the freshly loaded Settings (None when invalid) and what happened;
    the caller applies the changed live values to its running parts.
    """
    result = ReloadResult()
    reopen_logging()  # first: the lines below go to the new files
    try:
        new = load()
    except (ConfigError, OSError, ValueError) as exc:
        result.error = str(exc)
        level = logging.ERROR if report_others else logging.DEBUG
        log.log(level, "reload (%s): invalid settings, the old ones are kept: %s", process, exc)
        return None, result
    if new.log_level != current.log_level or new.log_json != current.log_json:
        reopen_logging(level=new.log_level, json_lines=new.log_json)
    for name in changed(current, new):
        if name in live:
            result.applied.append(name)
        elif name in FULL_STOP_START:
            result.needs_stop_start.append(name)
        else:
            result.needs_restart.append(name)
    for name in result.applied:
        log.warning(
            "reload: %s %s -> %s (%s, pid %d)",
            name,
            _shown(getattr(current, name)),
            _shown(getattr(new, name)),
            process,
            os.getpid(),
        )
        setattr(current, name, getattr(new, name))
    if report_others and result.needs_restart:
        log.warning(
            "reload: changed but needs a restart: %s (POST /restart/force, or "
            "scripts/stop.sh && scripts/start.sh)",
            ", ".join(env_name(n) for n in result.needs_restart),
        )
    if report_others and result.needs_stop_start:
        log.warning(
            "reload: changed but needs a full stop/start: %s (scripts/stop.sh && scripts/start.sh)",
            ", ".join(env_name(n) for n in result.needs_stop_start),
        )
    if not (result.applied or result.needs_restart or result.needs_stop_start):
        log.info("reload (%s, pid %d): logs reopened; no setting changed", process, os.getpid())
    return new, result


# --- the server ----------------------------------------------------------------------
def reload_server(runtime: Runtime, load: Callable[[], Settings] = load_settings) -> ReloadResult:
    """SIGHUP in the server: logs, settings, and the running parts that hold them."""
    settings = runtime.settings
    new, result = reload_settings(settings, process="server", live=SERVER_LIVE, load=load)
    if new is None or not result.applied:
        return result
    applied = set(result.applied)
    bot = runtime.telegram_bot
    if applied & {"telegram_allowed_users", "telegram_admin_id"}:
        admin = settings.telegram_admin_id
        runtime.chat.operator_ids = frozenset([] if admin is None else [str(admin)])
        if bot is not None:
            from core.telegram.rules import normalize_allowed

            bot.allowed = normalize_allowed(settings.telegram_allowed_users)
            bot.admin_id = admin
    if "chat_queue_limit" in applied:
        runtime.chat.queue_limit = settings.chat_queue_limit
    if "system_prompt" in applied:
        runtime.context.system_prompt = settings.system_prompt
    if applied & set(LIMITS_LIVE):
        apply_limits(runtime.chat, settings)
    if applied & set(GOVERNOR_LIVE):
        reload_thresholds = getattr(runtime.monitoring, "reload_thresholds", None)
        if reload_thresholds is not None:
            reload_thresholds(settings)
    return result


def apply_limits(chat: ChatService, settings: Settings) -> None:
    """Budgets, the rate limit and the idle restart take new values from the next turn."""
    from core.budgets import zone_of

    if chat.budgets is not None:
        chat.budgets.user_day = settings.budget_user_tokens_day
        chat.budgets.user_month = settings.budget_user_tokens_month
        chat.budgets.total_day = settings.budget_total_tokens_day
        chat.budgets.tz = zone_of(settings.timezone)
    if chat.rate_limiter is not None:
        chat.rate_limiter.per_min = settings.rate_limit_user_per_min
    chat.idle_reset_s = settings.context_idle_reset_min * 60.0


def install_server_handler(runtime: Runtime) -> Callable[[], None]:
    """SIGHUP on the server's event loop (main thread only); returns the uninstaller."""
    import asyncio
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # embedded (tests' in-thread servers): no signals here
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        try:
            reload_server(runtime)
        except Exception:  # a reload must never take the server down
            log.exception("reload failed; the server goes on with its settings")

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def uninstall() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return uninstall


async def start_reload_handler(app: Any, runtime: Runtime, stack: Any) -> None:
    """Starter: SIGHUP reloads instead of killing the server (the default action)."""
    stack.callback(install_server_handler(runtime))


# --- the supervisor's helper ----------------------------------------------------------
def print_log_values() -> int:
    """``python -c 'import core.reload as r; r.print_log_values()'``: the supervisor's
    reload reads the settings in a short-lived process (it never imports pydantic)."""
    try:
        settings = load_settings()
    except (ConfigError, OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps({name: getattr(settings, name) for name in EVERYWHERE}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(print_log_values())


# --- the worker ----------------------------------------------------------------------
def install_worker_handler(consumer: Any, settings: Settings) -> None:
    """SIGHUP in the Huey worker: reload (Huey's own SIGHUP would re-exec the consumer)."""
    import signal
    import threading

    actions = getattr(consumer, "_signal_actions", None)
    if isinstance(actions, dict):
        actions.pop(signal.SIGHUP, None)  # consumer.start() must not take it back

    def reload_now() -> None:
        try:
            reload_settings(settings, process="worker", live=EVERYWHERE, report_others=False)
        except Exception:  # a reload must never take the worker down
            log.exception("reload failed; the worker goes on with its settings")

    def on_hup(signum: int, frame: Any) -> None:
        # Not in the handler itself: it may interrupt a log call on this thread.
        threading.Thread(target=reload_now, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
