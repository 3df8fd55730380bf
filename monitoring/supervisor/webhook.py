"""The supervisor's critical alerts, posted to ``VIGIL_ALERT_WEBHOOK_URL``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from monitoring.alert_json import alert_fields, webhook_body

log = logging.getLogger(__name__)


def webhook_alerter(url: str, *, timeout_s: float = 5.0) -> Callable[..., None]:
    """Send the supervisor's critical alerts to ``VIGIL_ALERT_WEBHOOK_URL``.

    The same body shape as the governor's webhook (``source``, ``event``,
    ``alert``); posted from a short-lived thread so the supervisor loop never
    waits on the network.
    """

    def send(alert_type: str, message: str, event: str = "raised") -> None:
        now = time.time()
        alert = alert_fields(
            alert_type=alert_type,
            severity="critical",
            message=message,
            timestamp=now,
            resolved_at=now if event == "resolved" else None,
            recommended_action="read logs/system.log, fix the cause, then restart Vigil",
        )
        body = webhook_body("vigil-supervisor", event, alert)
        threading.Thread(target=_post, args=(url, body, timeout_s), daemon=True).start()

    return send


def _post(url: str, body: dict[str, Any], timeout_s: float) -> None:
    # Imported on the first alert: urllib and TLS are a third of an idle
    # supervisor's memory, and most never send an alert.
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            log.info("alert sent to the webhook (HTTP %d)", response.status)
    except (OSError, ValueError) as exc:
        log.warning("alert webhook failed: %s", exc)
