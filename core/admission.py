"""Admission of new chat turns: throttling, draining, maintenance, in-flight accounting.

The governor throttles (``throttle``/``unthrottle``), the restart path drains
(``start_draining``), the maintenance watch sets ``maintenance``
(``core/maintenance_mode.py``); every channel asks :meth:`Admission.check` before it
starts a turn and wraps the turn in :meth:`Admission.turn`.
"""

from __future__ import annotations

import asyncio
import collections
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
        # Set when draining starts: whatever waits on a client (a request body
        # still being sent) stops waiting and is told to come back.
        self.drain_started = asyncio.Event()
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
        self.drain_started.set()

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
    """A semaphore whose limit can be lowered and raised at run time, fair across keys.

    When every slot is taken, waiters queue per key (a user) and are served
    round-robin across keys: one user's burst waits behind everyone else's
    next turn instead of starving them. Waiters of one key are served in order.
    """

    def __init__(self, limit: int) -> None:
        self.configured = limit
        self.limit = limit
        self.active = 0
        self.waiting = 0
        # key -> its waiters, in round-robin order (the next key to serve first)
        self._queues: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict()
        )

    async def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self, key: str = "") -> AsyncIterator[None]:
        await self._acquire(key)
        try:
            yield
        finally:
            self.active -= 1
            self._wake()

    async def _acquire(self, key: str) -> None:
        if self.active < self.limit and not self._queues:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(key, collections.deque())
        queue.append(waiter)
        self.waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled: pass it on
                self.active -= 1
                self._wake()
            else:
                queue = self._queues.get(key, collections.deque())
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue:
                    self._queues.pop(key, None)
            raise
        finally:
            self.waiting -= 1

    def _wake(self) -> None:
        while self.active < self.limit and self._queues:
            key, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # round robin: this key waits its turn again
            else:
                del self._queues[key]
            if waiter.done():
                continue
            self.active += 1
            waiter.set_result(None)
