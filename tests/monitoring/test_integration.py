"""The governor inside the real server: real uvicorn, real SQLite, real psutil.

Thresholds sit below the server's own RSS and intervals are short, so the
memory alert is raised, the emergency cleanup runs, the restart request
reaches the server's graceful restart path, and the endpoints report it all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.database import connect_sync
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.monitoring.conftest import WebhookReceiver

FAST = {
    "governor_sample_interval_s": 0.1,
    "governor_health_check_interval_s": 0.3,
    "governor_optimize_interval_s": 0.3,
    "governor_cleanup_interval_s": 0.3,
    "governor_sustain_s": 0.3,
    "governor_clear_hold_s": 0.3,
    "governor_cleanup_cooldown_s": 0.5,
    "governor_memory_limit_mb": 100000.0,
}


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def test_memory_alert_cleanup_and_restart_request_end_to_end(
    tmp_path: Path,
    fake_llm: FakeLLM,
    webhook: WebhookReceiver,
    live_server_factory: Callable[..., LiveServer],
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        governor_cleanup_mb=1.0,  # far below any Python process's RSS
        governor_high_mb=90000.0,
        governor_restart_mb=90000.0,
        governor_hard_restart_mb=90000.0,
        alert_webhook_url=webhook.url,
        **FAST,
    )
    server = live_server_factory(settings)
    assert server.chat("demo", "hello").status_code == 200
    open_client = httpx.Client(base_url=server.url, timeout=10)

    def status() -> dict[str, Any]:
        response = open_client.get("/resources/status")
        assert response.status_code == 200, response.text
        return response.json()

    body = wait_for(
        lambda: (
            (s := status())["emergency"]["restart_requests"]
            and s["emergency"]["last_cleanup"]
            and s
        )
    )
    # other alerts (e.g. cpu_spike on a busy test machine) may be active too
    alerts = {a["alert_type"]: a for a in body["health"]["alerts"]}
    memory = alerts["memory_warning"]
    assert memory["severity"] == "medium" and memory["recommended_action"]
    assert memory["id"] is not None and memory["resolved_at"] is None
    assert body["emergency"]["emergency_cleanups"] >= 1
    request = body["emergency"]["restart_requests"][-1]
    assert request["reason"] == "governor_memory" and request["accepted"] is True
    assert body["limits"]["memory_budget_source"] == "setting"
    assert body["health"]["current_resources"]["memory_mb"] > 1
    assert 0 <= body["health"]["health_score"] <= 100
    assert body["health"]["signals"]["memory"] == "warning"

    # the server's graceful restart path took the request (embedded: it stays drained)
    lifecycle = server.runtime.lifecycle
    assert lifecycle.reason == "governor_memory"
    assert server.chat("demo", "are you there?").status_code == 503

    conn = connect_sync(settings.db_path, readonly=True)
    rows = conn.execute("SELECT alert_type, severity, raised_at, snapshot FROM alerts").fetchall()
    conn.close()
    stored = [r for r in rows if r["alert_type"] == "memory_warning"]
    assert [r["severity"] for r in stored] == ["medium"]
    assert '"memory_mb"' in stored[0]["snapshot"]

    wait_for(
        lambda: any(
            b["event"] == "raised" and b["alert"]["alert_type"] == "memory_warning"
            for b in webhook.bodies
        )
    )

    history = open_client.get("/resources/history", params={"minutes": 5}).json()
    assert history["count"] >= 3 and history["points"][-1]["memory_mb"] > 1
    assert open_client.get("/resources/history", params={"points": 0}).status_code == 422

    metrics = open_client.get("/metrics").text
    assert 'vigil_alerts_raised_total{alert_type="memory_warning"} 1.0' in metrics
    assert "vigil_health_score" in metrics and "process_resident_memory_bytes" in metrics
    assert 'vigil_restart_requests_total{reason="governor_memory"}' in metrics
    assert "vigil_turns_total 1.0" in metrics
    assert 'vigil_task_queue{state="pending"} 0.0' in metrics
    assert 'vigil_governor_step_seconds{step="snapshot"}' in metrics
    # the graceful path writes its restart record; /metrics counts the restarts table
    wait_for(
        lambda: (
            'vigil_restarts_total{reason="governor_memory"} 1.0' in open_client.get("/metrics").text
        )
    )
    open_client.close()


def test_cleanup_endpoint_and_sessions_report_need_the_token(live_server: LiveServer) -> None:
    assert live_server.chat("alpha", "hello").status_code == 200
    anonymous = httpx.Client(base_url=live_server.url, timeout=10)
    assert anonymous.post("/resources/cleanup").status_code == 401
    wrong = anonymous.post("/resources/cleanup", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    done = live_server.client.post("/resources/cleanup")
    assert done.status_code == 200, done.text
    cleanup = done.json()["cleanup"]
    assert {"freed_mb", "rss_before_mb", "rss_after_mb", "evicted_sessions"} <= set(cleanup)
    assert done.json()["emergency_cleanups"] == 1

    summary = anonymous.get("/sessions/report").json()
    assert summary["cached_sessions"] == 1 and "sessions" not in summary
    assert summary["turns"]["answered"] == 1 and summary["turns"]["latency_p50_s"] > 0
    assert (
        anonymous.get("/sessions/report", headers={"Authorization": "Bearer nope"}).status_code
        == 403
    )
    detailed = live_server.client.get("/sessions/report").json()
    assert [s["chat_id"] for s in detailed["sessions"]] == ["local:alpha"]
    assert detailed["sessions"][0]["context_messages"] == 2
    anonymous.close()


def test_sustained_load_throttles_new_turns_with_retry_after(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        governor_throttle_cpu_percent=0.001,  # any measurable CPU at all
        governor_sustain_s=0.0,
        governor_clear_hold_s=60.0,
        governor_sample_interval_s=0.05,
        governor_memory_limit_mb=100000.0,
        llm_concurrency=4,
    )
    server = live_server_factory(settings)
    wait_for(lambda: server.runtime.admission.throttled, timeout=20)
    response = server.chat("busy", "hello?")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "busy"
    assert server.runtime.limiter.limit == 2
    status = server.client.get("/resources/status").json()
    assert status["emergency"]["cpu_throttling"] is True
    assert "cpu_throttle" in [a["alert_type"] for a in status["health"]["alerts"]]


def test_idle_sessions_leave_memory_but_keep_their_history(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        governor_session_idle_s=0.5,
        governor_cleanup_interval_s=0.2,
        governor_optimize_interval_s=0.2,
        governor_memory_limit_mb=100000.0,
    )
    server = live_server_factory(settings)
    assert server.chat("idle", "remember me").status_code == 200
    assert server.client.get("/sessions/report").json()["cached_sessions"] == 1
    wait_for(lambda: server.client.get("/sessions/report").json()["cached_sessions"] == 0)
    status = server.client.get("/resources/status").json()
    assert status["governor"]["idle_sessions_evicted"] >= 1
    assert status["governor"]["last_optimise"] is not None
    history = server.client.get("/api/chats/idle/messages").json()["messages"]
    assert [m["content"] for m in history] == ["echo: remember me", "remember me"]
    # and the chat goes on from the database
    assert server.chat("idle", "still there?").status_code == 200
    assert "remember me" in str(fake_llm.requests[-1]["messages"])


def test_the_history_is_kept_across_a_restart(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, governor_sample_interval_s=0.05)
    first = live_server_factory(settings)
    wait_for(lambda: first.client.get("/resources/history").json()["count"] >= 5)
    first.stop()
    before = first.app.state.vigil.monitoring.history[-1].timestamp
    second = live_server_factory(settings)
    points = second.client.get("/resources/history", params={"points": 5000}).json()["points"]
    assert any(p["t"] <= before for p in points)  # the first run's samples are back


def test_a_corrupt_history_file_neither_stops_the_server_nor_breaks_the_chart(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, governor_sample_interval_s=0.05)
    now = time.time()
    good = {"timestamp": now - 60, "memory_mb": 123.0, "cpu_percent": 1.0}
    good |= {"active_sessions": 0, "total_processes": 1, "disk_usage_percent": 5.0}
    rows = [{"timestamp": "soon"}, {**good, "timestamp": now - 50, "memory_mb": "lots"}, good]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "resource_history.json").write_text(json.dumps(rows))
    server = live_server_factory(settings)
    answer = server.client.get("/resources/history", params={"points": 5000})
    assert answer.status_code == 200
    old = [p for p in answer.json()["points"] if p["t"] < now - 30]
    assert [p["memory_mb"] for p in old] == [123.0]  # the bad rows are gone, the good one kept


def test_a_blocked_event_loop_raises_loop_lag_and_throttles(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        debug_hooks=True,  # enables POST /debug/block (blocks the loop on purpose)
        governor_sample_interval_s=0.1,
        governor_sustain_s=0.0,
        governor_clear_hold_s=0.5,
        governor_memory_limit_mb=100000.0,
    )
    server = live_server_factory(settings)
    blocked = server.client.post("/debug/block", params={"seconds": 1.0})
    assert blocked.status_code == 200
    body = wait_for(
        lambda: (
            (s := server.client.get("/resources/status").json())["emergency"]["cpu_throttling"]
            and s
        )
    )
    types = {a["alert_type"] for a in body["health"]["alerts"]}
    assert {"loop_lag", "cpu_throttle"} <= types
    # the lag is gone: after the hold the throttle ends by itself
    wait_for(
        lambda: not server.client.get("/resources/status").json()["emergency"]["cpu_throttling"]
    )
    assert server.chat("after", "hello").status_code == 200
    assert server.runtime.limiter.limit == settings.llm_concurrency


def test_a_disabled_governor_still_reports_but_never_acts(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        governor_enabled=False,
        governor_cleanup_mb=1.0,
        governor_sample_interval_s=0.05,
        governor_sustain_s=0.0,
    )
    server = live_server_factory(settings)
    time.sleep(0.3)
    body = server.client.get("/resources/status").json()
    assert body["governor"]["running"] is False and body["governor"]["samples"] == 0
    assert body["health"]["current_resources"]["memory_mb"] > 1
    assert body["health"]["alerts"] == [] and body["emergency"]["emergency_cleanups"] == 0
    assert "vigil_health_score" in server.client.get("/metrics").text
