"""Is the backup healthy? Read from the ``backup_runs`` table (any process).

Backups run in the Huey worker and in ``vigilctl backup``; the server, the
CLI's ``status``/``validate`` and the metrics all judge them from the table,
never from an in-process call:

- ``failed``: the newest finished attempt failed;
- ``stale``: the newest successful backup is older than twice the backup
  period (the longest gap between two runs of the ``backup`` schedule);
- ``never``: no backup has ever succeeded, and none failed (a fresh install);
- ``disabled``: the ``backup`` schedule is ``off`` (``VIGIL_TASK_SCHEDULE``)
  and the newest attempt did not fail;
- ``ok``: otherwise.

Attempts still running (``finished_at`` NULL) are ignored; "newest" is by
row id (the order attempts started), failures in 24 h by ``started_at``. Stdlib plus the
schedule parser: cheap enough for a health check every few seconds.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from core.config import Settings

Status = Literal["ok", "failed", "stale", "never", "disabled"]
DAY_S = 86400.0
# The health reason (and alert rule name) for each alerting status.
REASONS: dict[str, str] = {"failed": "backup_failed", "stale": "backup_stale"}


@dataclass(frozen=True, slots=True)
class BackupState:
    status: Status
    period_s: float | None  # None: the backup schedule is off
    stale_after_s: float | None  # 2 x period_s
    last_success_at: float | None
    last_success_path: str | None
    last_success_size_bytes: int | None
    last_failure_at: float | None
    last_failure_error: str | None
    failures_24h: int
    age_s: float | None  # now - last_success_at
    checked_at: float

    @property
    def reason(self) -> str | None:
        """``backup_failed`` / ``backup_stale`` when it must alert, else None."""
        return REASONS.get(self.status)

    @property
    def alerting(self) -> bool:
        return self.reason is not None

    def message(self) -> str:
        """One line for an alert, ``/health`` and the CLI."""
        if self.status == "failed":
            error = (self.last_failure_error or "unknown error").removeprefix("backup failed: ")
            return f"the last backup failed: {error}"
        if self.status == "stale":
            assert self.age_s is not None and self.stale_after_s is not None
            return (
                f"the last successful backup is {_human(self.age_s)} old "
                f"(stale after {_human(self.stale_after_s)})"
            )
        if self.status == "never":
            return "no backup has been taken yet"
        if self.status == "disabled":
            return "scheduled backups are off (VIGIL_TASK_SCHEDULE backup=off)"
        assert self.age_s is not None
        return f"last backup {_human(self.age_s)} ago"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = self.reason
        data["message"] = self.message()
        return data


def _human(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} days"


def backup_expression(settings: Settings) -> str:
    from core.schedule import DEFAULT_SCHEDULE

    return settings.task_schedule.get("backup", DEFAULT_SCHEDULE["backup"]).strip()


@functools.lru_cache(maxsize=16)
def cron_period_s(expression: str) -> float | None:
    """The longest gap (s) between two consecutive runs of a cron expression.

    None when the schedule is off or never fires. Scanned minute by minute
    from a fixed Monday, over 8 days (enough for hourly to weekly schedules),
    widened to 62 and then 366 days for rarer ones; cached per expression.
    """
    from core.schedule import OFF, parse_cron

    if expression.lower() in OFF:
        return None
    validator = parse_cron(expression, task="backup")
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # a Monday, in a leap year
    for days in (8, 62, 366):
        fires: list[int] = []
        for minute in range(days * 1440):
            if validator(start + dt.timedelta(minutes=minute)):
                fires.append(minute)
        if len(fires) >= 2:
            return float(max(b - a for a, b in itertools.pairwise(fires))) * 60.0
    return None


def backup_period_s(settings: Settings) -> float | None:
    return cron_period_s(backup_expression(settings))


# Newest first by id (the rowid: no scan); the 24 h count uses the started_at index.
LAST_SUCCESS = (
    "SELECT finished_at, path, size_bytes FROM backup_runs WHERE ok = 1 ORDER BY id DESC LIMIT 1"
)
LAST_FAILURE = "SELECT finished_at, error FROM backup_runs WHERE ok = 0 ORDER BY id DESC LIMIT 1"
FAILURES_SINCE = "SELECT count(*) FROM backup_runs WHERE started_at >= ? AND ok = 0"


def read_backup_state(conn: sqlite3.Connection, settings: Settings, now: float) -> BackupState:
    """The backup status as of ``now``, from ``backup_runs`` (see the module doc)."""
    success = conn.execute(LAST_SUCCESS).fetchone()
    failure = conn.execute(LAST_FAILURE).fetchone()
    failures = int(conn.execute(FAILURES_SINCE, (now - DAY_S,)).fetchone()[0])
    return backup_state_from(success, failure, failures, settings, now)


async def read_backup_state_async(db: Any, settings: Settings, now: float) -> BackupState:
    """The same through the server's :class:`core.database.Database` (its readers)."""
    success = await db.fetchone(LAST_SUCCESS)
    failure = await db.fetchone(LAST_FAILURE)
    failures = int(await db.scalar(FAILURES_SINCE, (now - DAY_S,)))
    return backup_state_from(success, failure, failures, settings, now)


def backup_state_from(
    success: Sequence[Any] | None,
    failure: Sequence[Any] | None,
    failures_24h: int,
    settings: Settings,
    now: float,
) -> BackupState:
    period = backup_period_s(settings)
    stale_after = None if period is None else 2.0 * period
    last_ok_at = float(success[0]) if success else None
    last_fail_at = float(failure[0]) if failure else None
    age = None if last_ok_at is None else max(0.0, now - last_ok_at)
    status: Status
    if last_fail_at is not None and (last_ok_at is None or last_fail_at >= last_ok_at):
        status = "failed"
    elif stale_after is None:
        status = "disabled"
    elif age is None:
        status = "never"
    elif age > stale_after:
        status = "stale"
    else:
        status = "ok"
    return BackupState(
        status=status,
        period_s=period,
        stale_after_s=stale_after,
        last_success_at=last_ok_at,
        last_success_path=str(success[1]) if success and success[1] is not None else None,
        last_success_size_bytes=int(success[2]) if success and success[2] is not None else None,
        last_failure_at=last_fail_at,
        last_failure_error=str(failure[1]) if failure and failure[1] is not None else None,
        failures_24h=failures_24h,
        age_s=age,
        checked_at=now,
    )
