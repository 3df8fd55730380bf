"""Admission of new chat turns: throttling, draining, maintenance, in-flight accounting.

The governor throttles (``throttle``/``unthrottle``), the restart path drains
(``start_draining``), the maintenance watch sets ``maintenance``
(``core/maintenance_mode.py``); every channel asks :meth:`Admission.check` before it
starts a turn and wraps the turn in :meth:`Admission.turn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

from core.errors import Busy, Draining
from core.maintenance_mode import MaintenanceWindow


class Admission:
    """Shared gate in front of ChatService; all state lives on the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.throttled = False
        self.throttle_retry_after = 5.0
        self.throttle_reason = ""
        self.draining = False
        self.drain_reason = ""
        self.drain_retry_after = 30.0
        self.maintenance: MaintenanceWindow | None = None
        self.in_flight = 0
        self.rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def throttle(self, *, retry_after: float, reason: str) -> None:
        self.throttled, self.throttle_retry_after, self.throttle_reason = True, retry_after, reason

    def unthrottle(self) -> None:
        self.throttled, self.throttle_reason = False, ""

    def start_draining(self, *, reason: str, retry_after: float = 30.0) -> None:
        self.draining, self.drain_reason, self.drain_retry_after = True, reason, retry_after

    def check(self) -> None:
        """Raise Draining, MaintenanceError or Busy when a new turn must not start now."""
        if self.draining:
            self.rejected += 1
            raise Draining(
                "Vigil is restarting; back in a moment",
                retry_after=self.drain_retry_after,
                reason=self.drain_reason,
            )
        window = self.maintenance
        if window is not None:
            now = time.time()
            if not window.is_over(now):  # an expired window is off at once (the watch logs it)
                self.rejected += 1
                raise window.error(now)
        if self.throttled:
            self.rejected += 1
            raise Busy(
                f"Vigil is busy; try again in {self.throttle_retry_after:.0f} s",
                retry_after=self.throttle_retry_after,
                reason=self.throttle_reason,
            )

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no turn is in flight; False when the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class AdjustableLimiter:
    """A semaphore whose limit can be lowered and raised at run time."""

    def __init__(self, limit: int) -> None:
        self.configured = limit
        self.limit = limit
        self.active = 0
        self.waiting = 0
        self._cond = asyncio.Condition()

    async def set_limit(self, limit: int) -> None:
        async with self._cond:
            self.limit = max(1, limit)
            self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.active < self.limit)
            finally:
                self.waiting -= 1
            self.active += 1
        try:
            yield
        finally:
            async with self._cond:
                self.active -= 1
                self._cond.notify()
