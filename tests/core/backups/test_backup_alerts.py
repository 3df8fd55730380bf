"""Backups that alert: a failed or stale backup, seen by a running server from backup_runs.

The backup runs in another process (``main.py backup``, as the worker would),
the server is a real uvicorn on loopback, the webhook a real HTTP receiver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.backups.state import read_backup_state
from core.config import Settings
from core.sqlite import connect_sync
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.monitoring.conftest import WebhookReceiver
from tests.operator_cli import MAIN, cli_env, rows


def vigil(settings: Settings, *args: str, cwd: Path | None = None, **env: Any) -> Any:
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        env=cli_env(settings, **env),
        cwd=cwd or settings.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def health(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/health", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def events(webhook: WebhookReceiver, alert_type: str) -> list[str]:
    return [b["event"] for b in webhook.bodies if b["alert"]["alert_type"] == alert_type]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alerting(
    tmp_path: Path,
    fake_llm: FakeLLM,
    webhook: WebhookReceiver,
    live_server_factory: Callable[..., LiveServer],
) -> tuple[Settings, LiveServer]:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        alert_webhook_url=webhook.url,
        health_check_interval_s=0.2,
    )
    return settings, live_server_factory(settings)


@pytest.mark.slow
def test_unwritable_backup_dir_alerts_degrades_health_counts_and_recovers(
    tmp_path: Path, alerting: tuple[Settings, LiveServer], webhook: WebhookReceiver
) -> None:
    settings, server = alerting
    assert "backup_failed" not in health(server)["reasons"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    bad_dir = blocker / "backups"

    failed = vigil(settings, "backup", backup_dir=bad_dir)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"backup directory {bad_dir} is not writable" in lines[0]
    assert "VIGIL_BACKUP_DIR" in lines[0]

    # The record and the counter, written by the CLI process in one transaction.
    run = rows(settings.db_path, "SELECT ok, trigger, error, finished_at FROM backup_runs")
    assert [(r[0], r[1]) for r in run] == [(0, "cli")] and "not writable" in run[0][2]
    counter = rows(
        settings.db_path, "SELECT value FROM counters WHERE name = ?", ("vigil_backup_failures",)
    )
    assert [r[0] for r in counter] == [1.0]

    # The server notices from the table: /health degraded, alert raised, webhook sent.
    body = wait_for(lambda: (h := health(server))["status"] == "degraded" and h)
    assert "backup_failed" in body["reasons"]
    assert body["checks"]["backups"]["state"] == "failed"
    assert body["checks"]["backups"]["failures_24h"] == 1
    wait_for(lambda: "raised" in events(webhook, "backup_failed"))
    raised = next(b for b in webhook.bodies if b["alert"]["alert_type"] == "backup_failed")
    assert raised["alert"]["severity"] == "high"
    assert "Not a directory" in raised["alert"]["message"]
    assert "VIGIL_BACKUP_DIR" in raised["alert"]["recommended_action"]
    alerts = rows(settings.db_path, "SELECT alert_type, resolved_at FROM alerts")
    assert ("backup_failed", None) in [tuple(a) for a in alerts]
    # counted in /metrics like every other alert (it was left out: no series)
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'vigil_alerts_raised_total{alert_type="backup_failed"} 1.0' in metrics
    assert 'vigil_alerts_raised_total{alert_type="backup_stale"} 0.0' in metrics

    # What `status` shows (the status view reads the same function).
    conn = connect_sync(settings.db_path, readonly=True)
    try:
        state = read_backup_state(conn, settings, time.time())
    finally:
        conn.close()
    assert (state.status, state.reason, state.failures_24h) == ("failed", "backup_failed", 1)

    check = vigil(settings, "validate", "--json")
    assert check.returncode == 1, check.stdout + check.stderr
    verdict = {c["name"]: c for c in json.loads(check.stdout)["checks"]}
    assert verdict["backup_runs"]["status"] == "fail"
    assert verdict["backup_runs"]["detail"].startswith("backup_failed: ")

    # A backup that succeeds resolves it all.
    ok = vigil(settings, "backup")
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: "backup_failed" not in health(server)["reasons"])
    wait_for(lambda: "resolved" in events(webhook, "backup_failed"))
    assert health(server)["checks"]["backups"]["state"] == "ok"
    assert (
        rows(settings.db_path, "SELECT value FROM counters WHERE name = 'vigil_backup_failures'")[
            0
        ][0]
        == 1.0
    )
    assert vigil(settings, "validate").returncode == 0


@pytest.mark.slow
def test_stale_backup_alerts_and_a_fresh_one_resolves(
    tmp_path: Path,
    fake_llm: FakeLLM,
    webhook: WebhookReceiver,
    live_server_factory: Callable[..., LiveServer],
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        alert_webhook_url=webhook.url,
        health_check_interval_s=0.2,
    )
    server = live_server_factory(settings)
    # The last success 3 h ago: hourly backups are stale after 2 h.
    conn = connect_sync(settings.db_path)
    try:
        three_h = time.time() - 3 * 3600
        conn.execute(
            "INSERT INTO backup_runs (started_at, finished_at, ok, trigger, path, size_bytes)"
            " VALUES (?, ?, 1, 'scheduled', '/old.db.gz', 10)",
            (three_h - 5, three_h),
        )
    finally:
        conn.close()
    body = wait_for(lambda: "backup_stale" in (h := health(server))["reasons"] and h)
    assert body["status"] == "degraded"
    assert body["checks"]["backups"]["state"] == "stale"
    assert body["checks"]["backups"]["stale_after_s"] == 7200
    wait_for(lambda: "raised" in events(webhook, "backup_stale"))
    stale = vigil(settings, "validate", "--json")
    assert stale.returncode == 1
    verdict = {c["name"]: c for c in json.loads(stale.stdout)["checks"]}
    assert verdict["backup_runs"]["detail"].startswith("backup_stale: ")

    assert vigil(settings, "backup").returncode == 0
    wait_for(lambda: "resolved" in events(webhook, "backup_stale"))
    assert "backup_stale" not in health(server)["reasons"]
    assert "backup_failed" not in events(webhook, "backup_failed") + health(server)["reasons"]
