"""Alert notifiers: webhook with retries (real HTTP), Telegram rate limit, routing."""

from __future__ import annotations

import asyncio

from monitoring.alerts import PerformanceAlert
from monitoring.notifiers import AlertDispatcher, TelegramNotifier, WebhookNotifier
from tests.fake_llm import dead_url
from tests.monitoring.conftest import WebhookReceiver
from tests.monitoring.helpers import snap


def alert(severity: str = "medium", alert_type: str = "memory_warning") -> PerformanceAlert:
    return PerformanceAlert(
        alert_type=alert_type,
        severity=severity,
        message="Vigil uses 700 MB",
        timestamp=1000.0,
        resource_snapshot=snap(1000.0, 700.0),
        recommended_action="emergency cleanup",
        key="memory_cleanup",
    )


async def test_webhook_retries_server_errors_then_delivers(webhook: WebhookReceiver) -> None:
    webhook.fail_times = 2
    notifier = WebhookNotifier(webhook.url, retries=3, backoff_s=0.01)
    assert await notifier.send("raised", alert())
    assert webhook.attempts == 3 and notifier.sent == 1
    body = webhook.bodies[0]
    assert body["event"] == "raised" and body["alert"]["severity"] == "medium"
    assert body["alert"]["resource_snapshot"]["memory_mb"] == 700.0


async def test_webhook_gives_up_after_its_retries() -> None:
    notifier = WebhookNotifier(dead_url(), retries=1, backoff_s=0.01, timeout_s=1.0)
    assert not await notifier.send("raised", alert())
    assert notifier.failed == 1


async def test_telegram_alerts_are_rate_limited_and_count_what_they_skipped() -> None:
    sent: list[str] = []
    now = [0.0]

    async def send(text: str) -> None:
        sent.append(text)

    notifier = TelegramNotifier(send, min_interval_s=60.0, clock=lambda: now[0])
    assert await notifier.send("raised", alert("high"))
    now[0] = 10.0
    assert not await notifier.send("raised", alert("critical"))
    assert not await notifier.send("resolved", alert("high"))
    now[0] = 61.0
    assert await notifier.send("raised", alert("critical", "memory_critical"))
    assert len(sent) == 2
    assert "HIGH raised: memory_warning" in sent[0]
    assert "+2 more" in sent[1] and "memory_critical" in sent[1]


async def test_the_dispatcher_routes_by_severity(webhook: WebhookReceiver) -> None:
    telegram_texts: list[str] = []

    async def send(text: str) -> None:
        telegram_texts.append(text)

    telegram = TelegramNotifier(send, min_interval_s=0.0)
    dispatcher = AlertDispatcher(
        webhook=WebhookNotifier(webhook.url, backoff_s=0.01), telegram=lambda: telegram
    )
    dispatcher.notify("raised", alert("low", "cpu_pressure"))  # log only
    dispatcher.notify("raised", alert("medium"))  # + webhook
    dispatcher.notify("raised", alert("critical", "memory_critical"))  # + Telegram
    await dispatcher.drain(timeout=5)
    await asyncio.sleep(0)
    assert sorted(b["alert"]["severity"] for b in webhook.bodies) == ["critical", "medium"]
    assert len(telegram_texts) == 1 and "memory_critical" in telegram_texts[0]


async def test_telegram_alerts_reach_the_admin_chat_through_the_channel() -> None:
    from types import SimpleNamespace

    from monitoring.starter import _TelegramAlerts

    sent: list[tuple[str, str]] = []

    class Channel:
        async def send(self, chat_id: str, text: str) -> str:
            sent.append((chat_id, text))
            return "1"

    runtime = SimpleNamespace(
        telegram=None, telegram_channel=None, settings=SimpleNamespace(telegram_admin_id=42)
    )
    find = _TelegramAlerts(runtime)
    assert find() is None  # Telegram not configured: no notifier
    runtime.telegram = object()
    runtime.telegram_channel = Channel()
    notifier = find()
    assert notifier is not None and find() is notifier
    assert await notifier.send("raised", alert("critical", "memory_critical"))
    assert sent[0][0] == "tg:42" and "memory_critical" in sent[0][1]


async def test_webhook_with_a_malformed_url_counts_as_failed_not_a_traceback() -> None:
    notifier = WebhookNotifier("http://127.0.0.1:99999/hook", retries=2, backoff_s=0.01)
    assert not await notifier.send("raised", alert())
    assert notifier.failed == 1 and notifier.sent == 0


def test_the_supervisor_and_the_governor_post_one_body_shape() -> None:
    from monitoring.alert_json import alert_fields, webhook_body

    governor = webhook_body("vigil", "raised", alert().to_dict())
    supervisor = webhook_body(
        "vigil-supervisor",
        "raised",
        alert_fields(
            alert_type="restart_flap_limit",
            severity="critical",
            message="child crasher keeps crashing",
            timestamp=1000.0,
            recommended_action="read logs/system.log",
        ),
    )
    assert governor.keys() == supervisor.keys() == {"source", "event", "alert"}
    assert governor["alert"].keys() - {"resource_snapshot"} == supervisor["alert"].keys()
    assert governor["alert"]["raised_at"] == supervisor["alert"]["raised_at"]
    assert supervisor["alert"]["raised_at"] == "1970-01-01T00:16:40+00:00"
    assert supervisor["alert"]["resolved_at"] is None
