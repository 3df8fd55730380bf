"""Usage accounting end to end: real uvicorn, real SQLite, the fake model over HTTP/SSE."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM


def usage_rows(server: LiveServer) -> list[dict[str, Any]]:
    server.call(lambda rt: rt.chat.usage.flush(rt.db))
    conn = sqlite3.connect(server.settings.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]
    finally:
        conn.close()


def test_a_turn_records_the_model_usage_for_its_user(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    response = live_server.client.post(
        "/api/chats/demo/messages", json={"text": "hello there", "user": "ada"}
    )
    assert response.status_code == 200, response.text
    assert fake_llm.requests[-1]["stream_options"] == {"include_usage": True}
    prompt, completion = fake_llm.usage_of(fake_llm.requests[-1]["messages"], "echo: hello there")
    (row,) = usage_rows(live_server)
    assert row["user_id"] == "api:ada" and row["chat_id"] == "local:demo"
    assert (row["kind"], row["outcome"]) == ("turn", "ok")
    assert row["model"] == live_server.settings.llm_model
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (
        prompt,
        completion,
        0,
    )
    assert row["latency_ms"] >= row["ttft_ms"] >= 0


def test_without_user_the_turn_is_the_admins(live_server: LiveServer) -> None:
    live_server.chat("demo", "hi")
    assert [r["user_id"] for r in usage_rows(live_server)] == ["admin"]


def test_a_server_without_usage_gets_an_estimate_marked_as_such(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.send_usage = False
    live_server.client.post("/api/chats/demo/messages", json={"text": "hello", "user": "bo"})
    (row,) = usage_rows(live_server)
    assert row["estimated"] == 1
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


def test_a_server_that_rejects_stream_options_is_asked_without_them(
    live_server: LiveServer, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """Strict servers answer 400 to an unknown field: the turn is answered anyway, and
    from then on usage is estimated (one warning, not one per turn)."""
    fake_llm.reject_stream_options = True
    for text in ("hello", "again"):
        response = live_server.client.post("/api/chats/demo/messages", json={"text": text})
        assert response.status_code == 200 and response.json()["reply"] == f"echo: {text}"
    asked = ["stream_options" in body for body in fake_llm.requests if "messages" in body]
    assert asked == [True, False, False]  # refused once, then never sent again
    rows = usage_rows(live_server)
    assert [r["outcome"] for r in rows] == ["ok", "ok"]
    assert all(r["estimated"] == 1 for r in rows)
    warnings = [r for r in caplog.records if "does not accept stream_options" in r.getMessage()]
    assert len(warnings) == 1


def test_a_failed_call_is_recorded_with_its_error_kind(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    fake_llm.fail_status, fake_llm.fail_times = 500, -1
    server = live_server_factory(
        make_settings(tmp_path, llm_base_url=fake_llm.url, llm_max_retries=0)
    )
    server.chat("demo", "hi")
    (row,) = usage_rows(server)
    assert row["outcome"] == "llm_unavailable"
    assert row["completion_tokens"] == 0 and row["ttft_ms"] is None


def test_get_usage_aggregates_per_user_and_day(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        llm_price_input_per_1m=2.0,
        llm_price_output_per_1m=10.0,
    )
    server = live_server_factory(settings)
    for user, text in (("ada", "one"), ("ada", "two words"), ("bo", "three")):
        server.client.post("/api/chats/demo/messages", json={"text": text, "user": user})
    server.chat("other", "admin here")
    rows = usage_rows(server)
    body = server.client.get("/usage").json()
    users = {u["user"]: u for u in body["users"]}
    assert set(users) == {"api:ada", "api:bo", "admin"}
    ada = [r for r in rows if r["user_id"] == "api:ada"]
    assert users["api:ada"]["requests"] == 2
    assert users["api:ada"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in ada)
    expected_cost = sum(r["prompt_tokens"] * 2 + r["completion_tokens"] * 10 for r in ada) / 1e6
    assert users["api:ada"]["cost"] == pytest.approx(expected_cost)
    assert body["total"]["requests"] == 4 and len(body["days"]) == 1
    only = server.client.get("/usage", params={"user": "api:bo", "chat": "demo"}).json()
    assert [u["user"] for u in only["users"]] == ["api:bo"]
    none = server.client.get("/usage", params={"chat": "local:nothing"}).json()
    assert none["users"] == [] and none["total"]["requests"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "7x"}, "since"),
        ({"user": "x" * 81}, "user"),
        ({"user": "a\nb"}, "user"),
        ({"chat": "bad id!"}, "chat"),
    ],
)
def test_get_usage_refuses_bad_parameters_naming_them(
    live_server: LiveServer, params: dict[str, str], field: str
) -> None:
    response = live_server.client.get("/usage", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


def test_get_usage_needs_the_admin_token(live_server: LiveServer) -> None:
    assert live_server.client.get("/usage", headers={"Authorization": ""}).status_code == 401


def test_usage_without_prices_shows_no_cost(settings: Settings, live_server: LiveServer) -> None:
    live_server.chat("demo", "hi")
    body = live_server.client.get("/usage", params={"since": "1d"}).json()
    assert body["prices_set"] is False and "cost" not in body["users"][0]


def test_deleting_a_chat_deletes_its_usage(live_server: LiveServer) -> None:
    live_server.chat("gone", "hi")
    live_server.chat("kept", "hi")
    response = live_server.client.post(
        "/admin/delete", json={"scope": "chat", "target": "gone", "confirm": True}
    )
    assert response.status_code == 200, response.text
    assert [r["chat_id"] for r in usage_rows(live_server)] == ["local:kept"]


def test_metrics_count_tokens_requests_by_outcome_and_ttft(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    live_server.chat("m", "hello there")
    fake_llm.fail_status, fake_llm.fail_times = 400, 1
    live_server.chat("m", "again")
    rows = usage_rows(live_server)
    live_server.call(lambda rt: rt.counters.flush(rt.db))
    text = live_server.client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    model = live_server.settings.llm_model
    assert samples[("vigil_llm_tokens_total", (("kind", "prompt"), ("model", model)))] == sum(
        r["prompt_tokens"] for r in rows
    )
    assert samples[("vigil_llm_tokens_total", (("kind", "completion"), ("model", model)))] == sum(
        r["completion_tokens"] for r in rows
    )
    assert samples[("vigil_llm_requests_total", (("model", model), ("outcome", "ok")))] == 1
    failed = ("vigil_llm_requests_total", (("model", model), ("outcome", "llm_bad_response")))
    assert samples[failed] == 1
    count = ("vigil_llm_time_to_first_token_seconds_count", (("model", model),))
    assert samples[count] == 1


def test_a_count_stored_before_the_labels_is_kept_under_outcome_unlabeled(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    from core import counters
    from core.sqlite import connect_sync

    settings = make_settings(tmp_path, llm_base_url=fake_llm.url)
    first = live_server_factory(settings)
    first.stop()
    conn = connect_sync(settings.db_path)
    try:
        counters.add_sync(conn, "vigil_llm_requests", 41, {})
        conn.commit()
    finally:
        conn.close()
    server = live_server_factory(settings)
    text = server.client.get("/metrics").text
    assert 'vigil_llm_requests_total{model="",outcome="unlabeled"} 41.0' in text


def command(server: LiveServer, text: str, user: str | None = None) -> str:
    body: dict[str, Any] = {"text": text}
    if user is not None:
        body["user"] = user
    response = server.client.post("/api/chats/cmd/messages", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["reply"])


def test_usage_command_shows_own_tokens_and_the_budget_left(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, budget_user_tokens_day=100_000)
    server = live_server_factory(settings)
    server.client.post("/api/chats/cmd/messages", json={"text": "hello", "user": "ada"})
    server.client.post("/api/chats/cmd/messages", json={"text": "other", "user": "bo"})
    ada = [r for r in usage_rows(server) if r["user_id"] == "api:ada"]
    spent = sum(r["prompt_tokens"] + r["completion_tokens"] for r in ada)
    reply = command(server, "/usage", "ada")
    assert f"Your usage today: {spent:,} tokens" in reply
    assert f"This month: {spent:,} tokens" in reply
    assert f"today: {100_000 - spent:,} of 100,000 left" in reply
    assert "this month: unlimited" in reply
    assert "admin: no budget" in command(server, "/usage")


def test_usage_all_is_for_the_admin_only(live_server: LiveServer) -> None:
    live_server.client.post("/api/chats/cmd/messages", json={"text": "hello", "user": "ada"})
    assert "Only the admin" in command(live_server, "/usage all", "ada")
    reply = command(live_server, "/usage all")
    assert "Top users" in reply and "1. api:ada:" in reply


def test_usage_dashboard_data_has_every_hour_and_the_top_users(live_server: LiveServer) -> None:
    for user in ("ada", "bo", "bo"):
        live_server.client.post("/api/chats/d/messages", json={"text": "hello", "user": user})
    body = live_server.client.get("/usage/dashboard", params={"hours": 24}).json()
    assert len(body["hours"]) == 24
    assert (
        sum(h["prompt"] + h["completion"] for h in body["hours"]) == body["today"]["total_tokens"]
    )
    assert [u["user"] for u in body["top_users"]] == ["api:bo", "api:ada"]
    assert live_server.client.get("/usage/dashboard", params={"hours": 0}).status_code == 422
    assert (
        live_server.client.get("/usage/dashboard", headers={"Authorization": ""}).status_code == 401
    )


@pytest.mark.slow
def test_telegram_turns_count_for_tg_ids_and_the_admin_sees_usage_all(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    from tests.core.telegram.test_app import ADA, BOB, Tg, tg_settings
    from tests.fake_telegram import FakeTelegram

    fake = FakeTelegram()
    tg = Tg(live_server_factory(tg_settings(tmp_path, fake_llm), telegram=fake.factory), fake)
    tg.say("hi", sender=BOB, chat_id=43)
    tg.say("boss here", sender=ADA, chat_id=42)
    rows = usage_rows(tg.server)
    assert [(r["chat_id"], r["user_id"]) for r in rows] == [("tg:43", "tg:43"), ("tg:42", "admin")]
    tg.say("/usage", sender=BOB, chat_id=43)
    tg.say("/usage all", sender=BOB, chat_id=43)
    tg.say("/usage all", sender=ADA, chat_id=42)
    bob = fake.texts(43)
    spent = rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
    assert bob[1].startswith(f"Your usage today: {spent:,} tokens")
    assert bob[2] == "Only the admin can see everyone's usage. /usage shows yours."
    admin = fake.texts(42)[-1]
    assert "Top users" in admin and "tg:43" in admin and "admin" in admin
