"""When the periodic tasks run: Vigil's defaults, overridable per task.

Schedules are five-field cron expressions in UTC (minute hour day month
weekday, 0 = Sunday), checked by Huey's scheduler once a minute and at
start-up. ``VIGIL_TASK_SCHEDULE`` overrides them per task, e.g.
``{"backup": "0 */6 * * *", "vacuum": "off"}``.

An idle-session cleanup every 5 minutes is not here on purpose: the
chat windows live in the server's memory, so the server's governor evicts
them in-process (``VIGIL_GOVERNOR_CLEANUP_INTERVAL_S``); a worker cannot free
another process's memory, and the server's ``POST /resources/cleanup`` is an
*emergency* cleanup that must not run on a timer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from huey import crontab

from core.config import ConfigError

Validator = Callable[[dt.datetime], bool]

DEFAULT_SCHEDULE: dict[str, str] = {
    "cleanup_old_tasks": "0 3 * * *",  # daily: task records older than 7 days
    "backup": "0 * * * *",  # hourly, then retention
    "maintenance": "30 3 * * *",  # daily: checkpoint, ANALYZE, optimize
    "vacuum": "0 4 * * 0",  # weekly, Sunday, only if worthwhile and disk allows
    "message_retention": "15 3 * * *",  # daily, only with VIGIL_MESSAGE_RETENTION_DAYS
    "refine_summaries": "*/30 * * * *",  # model-written summaries of overflowed chats
}
OFF = ("off", "never", "disabled", "")


def parse_cron(expression: str, *, task: str) -> Validator:
    """A Huey crontab validator from ``"m h dom mon dow"``; ConfigError if malformed."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(
            f"VIGIL_TASK_SCHEDULE: {task}: {expression!r} is not a 5-field cron expression "
            "such as '0 3 * * *'"
        )
    minute, hour, day, month, weekday = fields
    try:
        return crontab(
            minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, strict=True
        )
    except ValueError as exc:
        raise ConfigError(f"VIGIL_TASK_SCHEDULE: {task}: {expression!r}: {exc}") from None


def resolve_schedule(overrides: Mapping[str, str]) -> dict[str, Validator | None]:
    """Every periodic task's validator (None = disabled), overrides applied."""
    unknown = sorted(set(overrides) - set(DEFAULT_SCHEDULE))
    if unknown:
        raise ConfigError(
            f"VIGIL_TASK_SCHEDULE: unknown task(s) {', '.join(unknown)}; known: "
            + ", ".join(DEFAULT_SCHEDULE)
        )
    resolved: dict[str, Validator | None] = {}
    for task, default in DEFAULT_SCHEDULE.items():
        expression = overrides.get(task, default).strip()
        resolved[task] = None if expression.lower() in OFF else parse_cron(expression, task=task)
    return resolved
