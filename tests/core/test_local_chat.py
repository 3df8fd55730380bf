"""The local chat channel end to end: real uvicorn, real SQLite, fake model over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer
from tests.fake_llm import FakeLLM


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_chat_returns_the_model_reply_and_stores_both_turns(live_server: LiveServer) -> None:
    response = live_server.chat("demo", "hello there")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "echo: hello there"
    assert body["error"] is None
    history = live_server.client.get("/api/chats/demo/messages").json()
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("assistant", "echo: hello there"),
        ("user", "hello there"),
    ]


def test_context_carries_earlier_turns_to_the_model(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    live_server.chat("ctx", "my name is Ada")
    live_server.chat("ctx", "what is my name?")
    sent = fake_llm.requests[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert [m["content"] for m in sent[1:]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]


def test_streaming_reply_as_server_sent_events(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "one two three four"
    response = live_server.chat("sse", "go", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    assert deltas == "one two three four"
    assert events[-1][0] == "done"
    assert events[-1][1]["reply"] == "one two three four"


def test_reset_clears_context_but_keeps_history(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    live_server.chat("r", "remember the number 7")
    reset = live_server.client.delete("/api/chats/r/context")
    assert reset.status_code == 200
    assert reset.json()["history_kept"] == 2
    live_server.chat("r", "which number?")
    sent = fake_llm.requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == ["which number?"]
    history = live_server.client.get("/api/chats/r/messages").json()
    assert len(history["messages"]) == 4


def test_history_pages_with_before_cursor_and_role_filter(live_server: LiveServer) -> None:
    for i in range(3):
        live_server.chat("pages", f"message {i}")
    first = live_server.client.get("/api/chats/pages/messages", params={"limit": 4}).json()
    assert len(first["messages"]) == 4
    rest = live_server.client.get(
        "/api/chats/pages/messages", params={"limit": 4, "before": first["next_before"]}
    ).json()
    assert len(rest["messages"]) == 2
    assert rest["next_before"] is None
    users = live_server.client.get("/api/chats/pages/messages", params={"role": "user"}).json()
    assert [m["content"] for m in users["messages"]] == ["message 2", "message 1", "message 0"]


def test_health_reports_database_llm_and_telegram(live_server: LiveServer) -> None:
    body = httpx.get(live_server.url + "/health").json()
    assert body["telegram"] == "not_configured"
    assert body["database"] == "ok"
    assert body["status"] in ("healthy", "degraded")
    assert httpx.get(live_server.url + "/health/live").json()["status"] == "alive"


def test_client_hanging_up_mid_stream_loses_nothing(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "a slow answer that keeps going for a while"
    fake_llm.token_delay_s = 0.05
    client = httpx.Client(base_url=live_server.url, headers=live_server.client.headers)
    with (
        client,
        client.stream(
            "POST",
            "/api/chats/hangup/messages",
            json={"text": "talk slowly"},
            headers={"Accept": "text/event-stream"},
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("event: delta"):
                break  # hang up after the first piece
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        history = live_server.client.get("/api/chats/hangup/messages").json()["messages"]
        if len(history) == 2:
            break
        time.sleep(0.05)
    assert [m["content"] for m in history] == [fake_llm.reply, "talk slowly"]


def test_throttled_and_draining_turns_get_retry_after(live_server: LiveServer) -> None:
    async def throttle(runtime) -> None:
        runtime.admission.throttle(retry_after=7, reason="cpu")

    async def drain(runtime) -> None:
        runtime.admission.unthrottle()
        runtime.admission.start_draining(reason="forced", retry_after=12)

    live_server.call(throttle)
    busy = live_server.chat("t", "hello")
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == "7"
    assert busy.json()["error"]["code"] == "busy"
    streamed = live_server.chat("t", "hello", headers={"Accept": "text/event-stream"})
    assert streamed.status_code == 429
    live_server.call(drain)
    draining = live_server.chat("t", "hello")
    assert draining.status_code == 503
    assert draining.headers["retry-after"] == "12"
    assert draining.json()["error"]["code"] == "restarting"
    assert live_server.client.get("/api/chats/t/messages").status_code == 404  # nothing stored


def test_retry_over_the_local_api_returns_the_new_reply(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    live_server.chat("again", "tell me a joke")
    fake_llm.reply = "a better joke"
    body = live_server.chat("again", "/retry").json()
    assert body["command"] == "retry"
    assert body["reply"] == "a better joke"
    assert body["reply_message_id"] is not None
    history = live_server.client.get("/api/chats/again/messages").json()["messages"]
    assert [m["content"] for m in history] == ["a better joke", "tell me a joke"]


def test_health_is_degraded_while_a_supervised_child_has_failed(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    # Found in review: a worker stopped by the flap limit (no more backups) left
    # /health "healthy". The state file is the supervisor's (our parent here).
    import os

    from tests.conftest import make_settings
    from tests.processes import wait_for

    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, health_check_interval_s=0.05)
    live_server = live_server_factory(settings)
    state: dict[str, Any] = {
        "pid": os.getppid(),
        "children": {"server": {"state": "running"}, "worker": {"state": "failed"}},
    }
    (live_server.settings.data_dir / "supervisor.json").write_text(json.dumps(state))

    def reasons() -> list[str]:
        return list(httpx.get(live_server.url + "/health").json()["reasons"])

    wait_for(lambda: "worker_failed" in reasons(), 10, "worker_failed in /health")
    assert httpx.get(live_server.url + "/health").json()["status"] == "degraded"
    state["children"]["worker"] = {"state": "backoff", "restarts_in_window": 3}
    (live_server.settings.data_dir / "supervisor.json").write_text(json.dumps(state))
    wait_for(lambda: "worker_flapping" in reasons(), 10, "worker_flapping in /health")
    state["children"]["worker"] = {"state": "running", "restarts_in_window": 0}
    (live_server.settings.data_dir / "supervisor.json").write_text(json.dumps(state))
    wait_for(lambda: not any("worker" in r for r in reasons()), 10, "the worker reason to clear")
    state["children"]["worker"]["state"] = "running"
    (live_server.settings.data_dir / "supervisor.json").write_text(json.dumps(state))
    assert not any("failed" in r for r in httpx.get(live_server.url + "/health").json()["reasons"])
