"""The JSON shape of an alert, and the webhook body that carries one.

Every alert webhook POST is ``{"source": ..., "event": "raised"|"resolved",
"alert": {...}}``, whoever sends it: the governor's ``WebhookNotifier``
(httpx, inside the server) and the supervisor's alerter (urllib in a thread:
the supervisor stays light). Both build it here. Standard library only, so
the supervisor can import this module without the server's dependencies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 in UTC, to the second; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def alert_fields(
    *,
    alert_type: str,
    severity: str,
    message: str,
    timestamp: float,
    recommended_action: str,
    key: str = "",
    alert_id: int | None = None,
    resolved_at: float | None = None,
) -> dict[str, Any]:
    """The fields every alert has, its times both as unix and as ISO 8601."""
    return {
        "id": alert_id,
        "key": key,
        "alert_type": alert_type,
        "severity": severity,
        "message": message,
        "timestamp": timestamp,
        "raised_at": iso(timestamp),
        "resolved_at": iso(resolved_at) if resolved_at else None,
        "recommended_action": recommended_action,
    }


def webhook_body(source: str, event: str, alert: dict[str, Any]) -> dict[str, Any]:
    """What the webhook receives: who sends (``vigil`` / ``vigil-supervisor``), what happened."""
    return {"source": source, "event": event, "alert": alert}
