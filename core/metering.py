"""What the server counts: HTTP requests, turns, errors; kept across restarts.

:class:`RequestMeter` (ASGI middleware, outermost) counts every request by
route *template* (``/api/chats/{chat_id}/messages``; paths no route knows
are ``other``), method and status, times it into a histogram, counts 5xx
answers as ``vigil_errors{kind="http_5xx"}`` and, with ``VIGIL_ACCESS_LOG``,
writes one line per request to ``logs/access.log``. The label values come
from the routes and a fixed method list, never from the raw path: a flood of
random paths adds nothing to memory.

:func:`start_metering` (a starter) loads the stored counters, tracks the
plain counts of the chat pipeline, the model client and the database, and
flushes every ``VIGIL_METRICS_FLUSH_INTERVAL_S`` and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core.counter_buffer import CounterBuffer, Labels
from core.logs import ACCESS_LOGGER, attach_access_log, detach_access_log

if TYPE_CHECKING:
    from fastapi import FastAPI

    from core.runtime import Runtime

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

INF = float("inf")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, INF)
TURN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, INF)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
# The answer when the client left before any response started.
CLIENT_GONE = 499
ERROR_KINDS = ("http_5xx", "llm", "telegram", "task", "governor", "database")


def route_templates(routes: Iterable[Any]) -> list[tuple[re.Pattern[str], str]]:
    """(regex, template) of every route, included routers flattened."""
    found: list[tuple[re.Pattern[str], str]] = []
    for route in routes:
        nested = getattr(route, "effective_route_contexts", None)
        if nested is not None:
            found += route_templates(nested())
        elif isinstance(getattr(route, "path_format", None), str):
            found.append((route.path_regex, route.path_format))
    return found


def route_of(scope: dict[str, Any], status: int, templates: list[tuple[Any, str]]) -> str:
    """The template of the route that served (or would have served) ``scope``."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    if status != 404:
        # Refused before routing (token, size, Host): name the route it was for.
        for regex, template in templates:
            if regex.match(scope.get("path", "")):
                return template
    return OTHER


class RequestMeter:
    """Counts and times every HTTP request; the optional access log."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.templates: list[tuple[Any, str]] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        runtime = getattr(scope.get("app"), "state", None)
        runtime = getattr(runtime, "vigil", None)
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = CLIENT_GONE

        async def send_and_see(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        except BaseException:
            if status == CLIENT_GONE:
                status = 500
            raise
        finally:
            try:
                self.record(runtime, scope, status, time.perf_counter() - started)
            except Exception:  # counting must never turn an answer into an error
                log.exception("counting %s %s failed", scope["method"], _path(scope))

    def record(self, runtime: Runtime, scope: Any, status: int, duration: float) -> None:
        if self.templates is None:  # the routes are all there once a request comes
            self.templates = route_templates(scope["app"].router.routes)
        method = scope["method"] if scope["method"] in METHODS else OTHER
        route = route_of(scope, status, self.templates)
        counters = runtime.counters
        counters.add(
            "vigil_http_requests",
            1.0,
            (("method", method), ("route", route), ("status", str(status))),
        )
        counters.observe(
            "vigil_http_request_duration_seconds",
            duration,
            HTTP_BUCKETS,
            (("method", method), ("route", route)),
        )
        if status >= 500:
            counters.add("vigil_errors", 1.0, (("kind", "http_5xx"),))
        if runtime.settings.access_log:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.1f ms",
                client[0] if client else "-",
                scope["method"][:16],
                _path(scope),
                status,
                duration * 1000,
            )


def _path(scope: Any, limit: int = 300) -> str:
    """The path only (a query string may carry secrets), as one printable token."""
    text = str(scope.get("path", "")).encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(kind: str) -> Labels:
    return (("kind", kind),)


def track_core(runtime: Runtime) -> None:
    """The counts core keeps as plain ints, polled into the buffer."""
    counters = runtime.counters
    chat, admission = runtime.chat, runtime.admission
    counters.track("vigil_turns", lambda: chat.stats.turns)
    counters.track("vigil_turn_failures", lambda: chat.stats.failed)
    counters.track("vigil_commands", lambda: chat.stats.commands)
    counters.track("vigil_turns_rejected", lambda: admission.rejected + chat.stats.rejected)
    if chat.rate_limiter is not None:  # the per-user rate limit refuses turns too
        limiter = chat.rate_limiter
        counters.track("vigil_turns_rejected", lambda: limiter.refusals)
    if chat.budgets is not None:
        budgets = chat.budgets
        counters.track("vigil_budget_refusals", lambda: budgets.refusals)
    models = chat.models  # every profile's client counts
    counters.track("vigil_llm_failures", lambda: models.failures)
    counters.track("vigil_llm_retries", lambda: models.retries)
    counters.track("vigil_errors", lambda: models.failures, _kind("llm"))
    counters.track("vigil_errors", lambda: runtime.db.write_errors, _kind("database"))
    counters.track("vigil_errors", lambda: _telegram_errors(runtime), _kind("telegram"))
    chat.stats.observers.append(
        lambda seconds: counters.observe("vigil_turn_duration_seconds", seconds, TURN_BUCKETS)
    )


def _telegram_errors(runtime: Runtime) -> int:
    """Telegram calls that ran out of time, and connections rebuilt."""
    gateway = runtime.telegram
    if gateway is None:
        return 0
    return int(getattr(gateway, "timeouts", 0)) + int(getattr(gateway, "reconnects", 0))


async def _flush_loop(runtime: Runtime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime.chat.usage.flush(runtime.db)
            await runtime.counters.flush(runtime.db)
            runtime.audit.sweep()
        except Exception:  # a loop boundary: the next round tries again
            log.exception("storing the counters failed")


async def start_metering(app: FastAPI, runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Starter: stored counters in, the flush loop, the final flush, the access log."""
    settings = runtime.settings
    counters: CounterBuffer = runtime.counters
    await counters.load(runtime.db)
    track_core(runtime)
    stack.push_async_callback(_final_flush, runtime)
    loop = asyncio.ensure_future(_flush_loop(runtime, settings.metrics_flush_interval_s))
    stack.callback(loop.cancel)
    if settings.access_log:
        handler = attach_access_log(
            settings.logs_dir, json_lines=settings.log_json, secrets=settings.secrets()
        )
        stack.callback(detach_access_log, handler)
        log.info("access log: %s", settings.logs_dir / "access.log")


async def _final_flush(runtime: Runtime) -> None:
    runtime.audit.sweep()
    await runtime.chat.usage.flush(runtime.db)
    if await runtime.counters.flush(runtime.db) or not runtime.counters.pending:
        return
    log.warning("%d counter(s) not stored at shutdown", len(runtime.counters.pending))
