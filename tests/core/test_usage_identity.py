"""Who a turn is for: the local API's optional ``user`` and the Telegram sender."""

from __future__ import annotations

import json

import pytest

from core.channel import api_user, telegram_user
from tests.conftest import LiveServer


def test_user_ids_are_namespaced_and_the_admin_is_admin() -> None:
    assert telegram_user(42, 1001) == "tg:42"
    assert telegram_user(1001, 1001) == "admin"
    assert telegram_user(42, None) == "tg:42"
    assert telegram_user(None, 1001) is None
    assert api_user("ada") == "api:ada"
    assert api_user(None) == "admin"


@pytest.mark.parametrize(
    "user",
    ["", "   ", "x" * 65, "line\nbreak", "tab\there", "\x00nul", "\ud800"],
)
def test_a_bad_user_field_is_refused_naming_it(live_server: LiveServer, user: str) -> None:
    response = live_server.client.post(
        "/api/chats/demo/messages",
        content=json.dumps({"text": "hi", "user": user}).encode(),  # escapes a lone surrogate
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_user" and error["field"] == "user"


def test_a_non_string_user_is_refused_with_4xx(live_server: LiveServer) -> None:
    response = live_server.client.post("/api/chats/demo/messages", json={"text": "hi", "user": 7})
    assert 400 <= response.status_code < 500, response.text
    assert "user" in response.text


def test_a_good_user_field_is_accepted(live_server: LiveServer) -> None:
    for user in ("a", "x" * 64, "Ada Lovelace", "ユーザー"):
        response = live_server.client.post(
            "/api/chats/demo/messages", json={"text": "hi", "user": user}
        )
        assert response.status_code == 200, response.text
        assert response.json()["reply"] == "echo: hi"
