"""Alert notifiers: the log (always), a webhook, and the Telegram admin chat.

Escalation by severity: ``low`` is logged only; ``medium``
also goes to the webhook; ``high`` and ``critical`` also go to the Telegram
admin chat (rate-limited, surplus messages are counted into the next one).
Sending never blocks the governor: every delivery runs as its own task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from monitoring.alert_json import webhook_body
from monitoring.alerts import PerformanceAlert

log = logging.getLogger(__name__)

# A URL the config accepted can still be one httpx refuses (port 99999 ->
# InvalidURL, OverflowError from the socket layer); such a send counts as
# failed instead of escaping as "Task exception was never retrieved".
_SEND_ERRORS = (
    httpx.HTTPError,
    httpx.InvalidURL,
    OSError,
    ValueError,
    OverflowError,
    ExceptionGroup,  # anyio's connect wraps the OverflowError in one
)

_LOG_LEVEL = {
    "low": logging.INFO,
    "medium": logging.WARNING,
    "high": logging.WARNING,
    "critical": logging.CRITICAL,
}


class WebhookNotifier:
    """JSON POST per alert event, with a timeout and a few retries."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        source: str = "vigil",
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.source = source
        self.sent = 0
        self.failed = 0

    async def send(self, event: str, alert: PerformanceAlert) -> bool:
        body = webhook_body(self.source, event, alert.to_dict())
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            for attempt in range(self.retries + 1):
                try:
                    response = await client.post(self.url, json=body)
                    if response.status_code < 300:
                        self.sent += 1
                        return True
                    problem = f"HTTP {response.status_code}"
                    if 400 <= response.status_code < 500 and response.status_code != 429:
                        break  # the receiver rejects this body; retrying will not help
                except _SEND_ERRORS as exc:
                    problem = type(exc).__name__
                    if not isinstance(exc, httpx.HTTPError):
                        break  # a malformed URL stays malformed; retrying will not help
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        log.warning("alert webhook failed for %s (%s): %s", alert.alert_type, event, problem)
        return False


class TelegramNotifier:
    """Sends alert lines to the admin chat, at most one message per interval."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[Any]],
        *,
        min_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: float | None = None
        self.suppressed = 0
        self.sent = 0

    async def send(self, event: str, alert: PerformanceAlert) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.min_interval_s:
            self.suppressed += 1
            return False
        self._last = now
        more = f"\n(+{self.suppressed} more alert events, see /resources/status)"
        text = f"[Vigil] {alert.severity.upper()} {event}: {alert.alert_type} — {alert.message}"
        if event == "raised":
            text += f"\nAction: {alert.recommended_action}"
        if self.suppressed:
            text += more
        self.suppressed = 0
        try:
            await self._send(text)
        except Exception as exc:  # a Telegram failure must not hurt the governor
            log.warning("alert to the Telegram admin chat failed: %s", type(exc).__name__)
            return False
        self.sent += 1
        return True


class AlertDispatcher:
    """Routes alert events to the notifiers their severity calls for."""

    def __init__(
        self,
        *,
        webhook: WebhookNotifier | None = None,
        telegram: Callable[[], TelegramNotifier | None] = lambda: None,
    ) -> None:
        self.webhook = webhook
        self.telegram = telegram
        self._tasks: set[asyncio.Task[Any]] = set()

    def notify(self, event: str, alert: PerformanceAlert) -> None:
        level = _LOG_LEVEL.get(alert.severity, logging.WARNING)
        if event == "resolved":
            level = logging.INFO
        log.log(
            level,
            "alert %s %s [%s]: %s (action: %s)",
            alert.alert_type,
            event,
            alert.severity,
            alert.message,
            alert.recommended_action,
        )
        if alert.severity == "low":
            return
        if self.webhook is not None:
            self._spawn(self.webhook.send(event, alert))
        telegram = self.telegram()
        if telegram is not None and alert.severity in ("high", "critical"):
            self._spawn(telegram.send(event, alert))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        if len(self._tasks) > 100:  # a dead receiver must not pile up tasks
            log.warning("alert notification dropped: too many deliveries pending")
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 2.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
