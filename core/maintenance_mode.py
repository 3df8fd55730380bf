"""Maintenance mode: new turns are refused politely while the operator works.

The one durable copy is the ``maintenance`` row of ``system.db`` (one row =
on), written by ``scripts/vigilctl maintenance on|off``, so the mode survives a
server restart and works while the server is down. The running server reads
the row every :data:`POLL_S` (one primary-key lookup on a one-row table) and
hands the window to :class:`~core.admission.Admission`, which refuses new turns
with :class:`MaintenanceError` (HTTP 503 ``maintenance`` with ``Retry-After``;
a polite reply in Telegram). Monitoring and admin endpoints are not turns:
they stay up. A window whose ``until`` has passed is switched off by itself
(the server deletes the row and logs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import BadRequest, Busy

if TYPE_CHECKING:
    from fastapi import FastAPI

    from core.database import Database
    from core.runtime import Runtime

log = logging.getLogger(__name__)

POLL_S = 1.0  # how soon a running server takes up `maintenance on/off`
DEFAULT_RETRY_AFTER_S = 300.0  # Retry-After when the window has no end
MAX_UNTIL_S = 366 * 86400.0  # a window ends within a year (or has no end)
_RELATIVE_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class MaintenanceError(Busy):
    """Vigil is down for maintenance: no new turns until the operator ends it."""

    code = "maintenance"
    status = 503


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """The ``maintenance`` row: on since ``started_at``, until ``until`` (None: no end set)."""

    reason: str
    started_at: float
    until: float | None = None
    set_by: str = "cli"

    def is_over(self, now: float) -> bool:
        return self.until is not None and self.until <= now

    def retry_after(self, now: float) -> float:
        if self.until is None:
            return DEFAULT_RETRY_AFTER_S
        return max(1.0, self.until - now)

    def until_text(self, now: float | None = None) -> str:
        """``until 21:30 UTC`` (today), ``until 2026-12-05 09:00 UTC``, or no end."""
        if self.until is None:
            return "for a short while"
        return "until " + fmt_utc(self.until, now=now)

    def error(self, now: float) -> MaintenanceError:
        return MaintenanceError(
            f"Vigil is down for maintenance {self.until_text(now)}; please try again then",
            retry_after=self.retry_after(now),
            reason=self.reason,
            until=self.until,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "started_at": self.started_at,
            "until": self.until,
            "set_by": self.set_by,
        }


def fmt_utc(at: float, *, now: float | None = None) -> str:
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    if when.date() == today:
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def parse_until(text: str, *, now: float | None = None) -> float:
    """``--until``: ``30m``, ``2h``, ``1h30m``, ``1d``; ``21:30`` (today, UTC); or an ISO
    time (``2026-12-05T09:00``, ``...Z``, ``...+01:00``; without an offset it is UTC).

    Raises BadRequest (one line) for anything else and for a time not in the future.
    """
    now = time.time() if now is None else now
    value = text.strip()
    relative = _RELATIVE_RE.match(value.lower()) if value else None
    if relative and any(relative.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in relative.groups())
        delta = days * 86400 + hours * 3600 + minutes * 60 + seconds
        if delta <= 0:
            raise BadRequest(f"--until {text!r} is not in the future")
        return _within_a_year(text, now + delta, now)
    clock = _CLOCK_RE.match(value)
    if clock:
        day = dt.datetime.fromtimestamp(now, dt.UTC)
        at = day.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
    else:
        try:
            at = dt.datetime.fromisoformat(value.replace(" ", "T", 1))
        except ValueError:
            raise BadRequest(
                f"--until {text!r} is not a time: give e.g. 30m, 2h, 21:30 (UTC) "
                "or 2026-12-05T09:00Z"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
    stamp = at.timestamp()
    if stamp <= now:
        raise BadRequest(
            f"--until {text!r} is in the past ({fmt_utc(stamp, now=now)}; now "
            f"{fmt_utc(now, now=now)})"
        )
    return _within_a_year(text, stamp, now)


def _within_a_year(text: str, stamp: float, now: float) -> float:
    if stamp - now > MAX_UNTIL_S:
        raise BadRequest(
            f"--until {text!r} is more than a year away; leave --until out for a window "
            "without an end"
        )
    return stamp


# --- the row ------------------------------------------------------------------
SELECT = "SELECT reason, started_at, until, set_by FROM maintenance WHERE id = 1"


def _window(row: Any) -> MaintenanceWindow | None:
    if row is None:
        return None
    until = row["until"]
    return MaintenanceWindow(
        reason=str(row["reason"]),
        started_at=float(row["started_at"]),
        until=None if until is None else float(until),
        set_by=str(row["set_by"]),
    )


def read_sync(conn: sqlite3.Connection) -> MaintenanceWindow | None:
    return _window(conn.execute(SELECT).fetchone())


def set_sync(conn: sqlite3.Connection, window: MaintenanceWindow) -> None:
    """Turn it on (or change reason/until of the window already on; ``started_at`` kept)."""
    conn.execute(
        "INSERT INTO maintenance (id, reason, started_at, until, set_by) VALUES (1, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET reason = excluded.reason, until = excluded.until,"
        " set_by = excluded.set_by",
        (window.reason, window.started_at, window.until, window.set_by),
    )


def clear_sync(conn: sqlite3.Connection) -> MaintenanceWindow | None:
    """Turn it off; returns the window that was on (None: it was off)."""
    window = read_sync(conn)
    conn.execute("DELETE FROM maintenance WHERE id = 1")
    return window


async def read(db: Database) -> MaintenanceWindow | None:
    return _window(await db.fetchone(SELECT))


async def expire(db: Database, window: MaintenanceWindow) -> bool:
    """Delete the row if it still is this window (a new ``on`` meanwhile stays)."""
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "DELETE FROM maintenance WHERE id = 1 AND started_at = ? AND until IS ? AND reason = ?",
            (window.started_at, window.until, window.reason),
        )
        return cursor.rowcount > 0


# --- the server's watch -----------------------------------------------------------
class MaintenanceWatch:
    """Keeps ``runtime.admission.maintenance`` equal to the row; ends expired windows."""

    def __init__(self, runtime: Runtime, *, poll_s: float = POLL_S) -> None:
        self.runtime = runtime
        self.poll_s = poll_s
        self.failed = False

    async def check(self) -> MaintenanceWindow | None:
        admission = self.runtime.admission
        try:
            window = await read(self.runtime.db)
            if window is not None and window.is_over(time.time()):
                if await expire(self.runtime.db, window):
                    log.warning(
                        "maintenance mode ended by itself: its end (%s) has passed (%s)",
                        fmt_utc(window.until or 0.0),
                        window.reason,
                    )
                window = await read(self.runtime.db)
        except Exception as exc:  # storage trouble: keep the last known state
            if not self.failed:
                log.warning("cannot read the maintenance mode (kept as it was): %s", exc)
            self.failed = True
            return admission.maintenance
        self.failed = False
        old = admission.maintenance
        if window != old:
            if window is None:
                log.warning("maintenance mode off: new turns are answered again")
            elif old is None:
                log.warning(
                    "maintenance mode on (%s, set by %s): new turns are refused %s",
                    window.reason,
                    window.set_by,
                    window.until_text(),
                )
            else:
                log.warning("maintenance mode changed: %s, %s", window.reason, window.until_text())
            admission.maintenance = window
        return window

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.check()


async def start_maintenance_watch(
    app: FastAPI, runtime: Runtime, stack: contextlib.AsyncExitStack
) -> None:
    """Starter: read the mode before Telegram resumes pending messages, then poll."""
    watch = MaintenanceWatch(runtime)
    await watch.check()
    task = asyncio.ensure_future(watch.loop())
    stack.callback(task.cancel)
