"""AutoRestartManager: the daily scheduled restart (``VIGIL_RESTART_SCHEDULE``).

At the daily time (host local time, ``HH:MM``) the server asks for a graceful
restart, but only when no turn is in flight; otherwise it postpones, checking
again every few seconds, for at most ``restart_schedule_max_postpone_s``, and
then skips that day (a preventive restart is never worth cutting a reply).
The decision is a pure function of (now, due time, turns in flight, limit);
the restart itself is the server's graceful path, reached through the
``request_restart(reason, detail)`` callable it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)

POLL_S = 5.0


def next_run(now: dt.datetime, schedule: str, *, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The next ``HH:MM`` wall-clock time strictly after ``now``, in ``tz`` (default: host local).

    The wall time is localised for its own date: the offset of ``now`` (a fixed
    one from ``astimezone()``) must not be carried across a DST change, or the
    restart the day after runs an hour late (or early).
    """
    hour, minute = (int(part) for part in schedule.split(":"))
    at = dt.time(hour, minute)
    today = (now.astimezone(tz) if tz is not None else now.astimezone()).date()
    for days in range(3):
        candidate = _localise(dt.datetime.combine(today + dt.timedelta(days=days), at), tz)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a wall time recurs within two days")  # pragma: no cover


def _localise(wall: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    # astimezone() on a naive datetime asks the host's zone for that date's offset.
    return wall.replace(tzinfo=tz) if tz is not None else wall.astimezone()


def decide(now: dt.datetime, due: dt.datetime, in_flight: int, max_postpone_s: float) -> str:
    """``wait`` before the time, ``restart`` when idle, ``postpone``, or ``skip``."""
    if now < due:
        return "wait"
    if in_flight == 0:
        return "restart"
    if (now - due).total_seconds() >= max_postpone_s:
        return "skip"
    return "postpone"


def _local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


class AutoRestartManager:
    """Runs the daily schedule; ``status()`` feeds ``GET /restart/status``."""

    def __init__(
        self,
        schedule: str | None,
        *,
        max_postpone_s: float,
        in_flight: Callable[[], int],
        request_restart: Callable[[str, str], bool],
        now: Callable[[], dt.datetime] = _local_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_s: float = POLL_S,
        tz: dt.tzinfo | None = None,
    ) -> None:
        self.schedule = schedule
        self.max_postpone_s = max_postpone_s
        self.in_flight = in_flight
        self.request_restart = request_restart
        self.now = now
        self.sleep = sleep
        self.poll_s = poll_s
        self.tz = tz
        self.next_at: dt.datetime | None = next_run(now(), schedule, tz=tz) if schedule else None
        self.postponed_since: dt.datetime | None = None
        self.last_skipped: dt.datetime | None = None
        self.requested = False

    async def step(self) -> str:
        """One decision at the current time, carried out; returns the action."""
        if self.next_at is None:
            return "off"
        action = decide(self.now(), self.next_at, self.in_flight(), self.max_postpone_s)
        if action == "restart":
            detail = f"daily restart window {self.schedule}"
            if self.postponed_since is not None:
                waited = (self.now() - self.postponed_since).total_seconds()
                detail += f", postponed {waited:.0f} s for turns in flight"
            self.requested = self.request_restart("scheduled", detail)
            self.postponed_since = None
        elif action == "postpone" and self.postponed_since is None:
            self.postponed_since = self.next_at
            log.info("scheduled restart postponed: %d turn(s) in flight", self.in_flight())
        elif action == "skip":
            log.warning(
                "scheduled restart skipped today: turns kept arriving for %.0f s",
                self.max_postpone_s,
            )
            self.last_skipped, self.postponed_since = self.next_at, None
            self.next_at = next_run(self.now(), self.schedule or "00:00", tz=self.tz)
        return action

    async def run(self) -> None:
        while True:
            try:
                action = await self.step()
            except Exception:  # loop boundary
                log.exception("scheduled restart check failed")
                action = "postpone"
            if action in ("off",) or self.requested:
                return
            wait = self.poll_s
            if action == "wait" and self.next_at is not None:
                # Sleep in bounded chunks so a clock change is noticed.
                wait = min(60.0, max(0.05, (self.next_at - self.now()).total_seconds()))
            await self.sleep(wait)

    def status(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "timezone": str(self.tz or self.now().tzinfo),
            "next_at": self.next_at.timestamp() if self.next_at else None,
            "next_at_iso": self.next_at.isoformat(timespec="seconds") if self.next_at else None,
            "postponed_since": self.postponed_since.isoformat(timespec="seconds")
            if self.postponed_since
            else None,
            "last_skipped": self.last_skipped.isoformat(timespec="seconds")
            if self.last_skipped
            else None,
            "max_postpone_s": self.max_postpone_s,
        }


def start_auto_restart(app: Any, runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Starter (after the server's lifecycle starter): the schedule loop."""
    request = runtime.request_restart
    manager = AutoRestartManager(
        runtime.settings.restart_schedule,
        max_postpone_s=runtime.settings.restart_schedule_max_postpone_s,
        in_flight=lambda: int(runtime.admission.in_flight),
        request_restart=request,
    )
    runtime.scheduled_restarts = manager
    if manager.next_at is not None:
        log.info("scheduled restart daily at %s (next %s)", manager.schedule, manager.next_at)
        task = asyncio.ensure_future(manager.run())
        stack.callback(task.cancel)
