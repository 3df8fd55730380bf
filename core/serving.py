"""The open port's limits: file descriptors, connections, request-head deadlines.

uvicorn caps requests (``limit_concurrency`` answers 503 past it) and closes
idle keep-alive connections, but it keeps a connection that never sends a
complete request head open for ever, and it accepts connections until the
process runs out of file descriptors. This module adds the missing parts:

- the soft ``RLIMIT_NOFILE`` is raised to the hard limit at start, and the
  connection cap is derived from it (``VIGIL_MAX_CONNECTIONS`` overrides);
- :func:`guarded_protocol` is uvicorn's h11 protocol with a deadline for a
  complete request head (slowloris) and a bound on connections waiting for
  one: the oldest waiting connection is dropped for a new one, so a flood of
  idle sockets cannot starve ``/health/live`` or hold every descriptor;
- :class:`AcceptErrors` logs the event loop's "out of file descriptors"
  accept errors once per interval with a count instead of one traceback each;
- past the request cap, uvicorn's plain-text 503 becomes Vigil's JSON error
  (``overloaded``, with ``Retry-After``) and its warning, one per refused
  request, becomes one line per interval with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

MAX_DEFAULT_CONNECTIONS = 8192


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft)


def connection_limit(configured: int | None, nofile: int) -> int:
    """Connections served at once: the setting, or what the fd budget allows.

    Descriptors are reserved for everything else the process opens (SQLite
    files, logs, the model and Telegram connections, backups).
    """
    reserve = max(64, nofile // 8)
    budget = max(16, nofile - reserve)
    if configured is not None:
        if configured > budget:
            log.warning(
                "VIGIL_MAX_CONNECTIONS=%d exceeds the open-file budget (%d of %d descriptors); "
                "using %d (raise LimitNOFILE / ulimit -n for more)",
                configured,
                budget,
                nofile,
                budget,
            )
        return min(configured, budget)
    return min(MAX_DEFAULT_CONNECTIONS, budget)


class _Guard:
    """What the connections of one server share: the ones waiting for a head."""

    def __init__(self, *, limit: int, head_timeout_s: float) -> None:
        self.limit = limit
        self.max_waiting = max(1, limit // 2)
        self.head_timeout_s = head_timeout_s
        self.waiting: dict[Any, None] = {}  # insertion order: oldest first
        self.dropped = 0
        self.timed_out = 0
        self.refused = 0


OVERLOADED_BODY = json.dumps(
    {
        "error": {
            "code": "overloaded",
            "message": "the server is answering as many requests as it allows; retry in a second",
        }
    }
).encode()
OVERLOADED_WARNING = "Exceeded concurrency limit."


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer past the request cap: Vigil's JSON error instead of uvicorn's text."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(OVERLOADED_BODY)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": OVERLOADED_BODY, "more_body": False})


class OverloadWarnings(logging.Filter):
    """uvicorn warns once per refused request; under a flood that is the whole log.

    Lets the first through, then one summary line per interval with the count.
    """

    def __init__(self, *, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.suppressed = 0
        self.total = 0
        self._last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != OVERLOADED_WARNING:
            return True
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        record.msg = (
            "request cap reached: answering 503 overloaded "
            f"({self.suppressed + 1} request(s) refused since the last report); "
            "raise VIGIL_MAX_CONNECTIONS if this is real load"
        )
        record.args = ()
        self.suppressed = 0
        self._last = now
        return True


def _install_overload_answer() -> None:
    # uvicorn looks the 503 app up as a module global of its h11 protocol on every
    # refused request: pointing it at ours is the one hook it offers.
    h11_impl.service_unavailable = overloaded
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OverloadWarnings) for f in error_log.filters):
        error_log.addFilter(OverloadWarnings())


def guarded_protocol(*, limit: int, head_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a head deadline and a bound on idle connections."""
    guard = _Guard(limit=limit, head_timeout_s=head_timeout_s)
    _install_overload_answer()

    class GuardedH11Protocol(H11Protocol):
        vigil_guard = guard

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            if len(self.connections) >= guard.limit and not self._evict_oldest():
                guard.refused += 1
                transport.close()  # every slot is serving a request: this one waits its turn
                return
            if len(guard.waiting) >= guard.max_waiting:
                self._evict_oldest()
            self._wait_for_head(guard.head_timeout_s)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                if self in guard.waiting:
                    self._head_seen()
            elif self._head_timer is None and not self.transport.is_closing():
                # Part of a head on a kept-alive connection: the bytes cancelled
                # uvicorn's keep-alive timer, so the head deadline starts now.
                self._wait_for_head(guard.head_timeout_s)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                # Idle keep-alive: uvicorn's own timer closes it if nothing comes.
                # It may be dropped for a new connection; no timer of ours yet
                # (one per request would cost every request).
                guard.waiting[self] = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_seen()
            super().connection_lost(exc)

        def _wait_for_head(self, seconds: float) -> None:
            self._head_seen()
            guard.waiting[self] = None
            self._head_timer = self.loop.call_later(seconds, self._head_late)

        def _head_seen(self) -> None:
            guard.waiting.pop(self, None)
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            guard.timed_out += 1
            self._drop()

        def _evict_oldest(self) -> bool:
            for other in guard.waiting:
                if other is not self:
                    guard.dropped += 1
                    other._drop()
                    return True
            return False

        def _drop(self) -> None:
            self._head_seen()
            if not self.transport.is_closing():
                with contextlib.suppress(Exception):
                    self.transport.close()

    return GuardedH11Protocol


class AcceptErrors:
    """An event-loop exception handler that says "out of descriptors" once per interval.

    asyncio reports every failed ``accept()`` (EMFILE, ENFILE, ENOBUFS,
    ENOMEM) with a traceback and retries a second later; under a flood that
    is thousands of tracebacks. Other errors go to the default handler.
    """

    def __init__(self, *, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.count = 0
        self.total = 0
        self._last_logged = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if now - self._last_logged >= self.interval_s:
            log.error(
                "cannot accept connections: %s (%d time(s) in the last %g s); "
                "raise the open-file limit (LimitNOFILE) or lower VIGIL_MAX_CONNECTIONS",
                context.get("exception") or "out of file descriptors",
                self.count,
                self.interval_s,
            )
            self.count = 0
            self._last_logged = now
