"""Who a turn is for: the local API's optional ``user`` and the Telegram sender."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"VIGIL_USAGE_RETENTION_DAYS": "31"},
            "VIGIL_USAGE_RETENTION_DAYS: Input should be greater",
        ),
        ({"VIGIL_USAGE_RETENTION_DAYS": "a year"}, "VIGIL_USAGE_RETENTION_DAYS: Input should be"),
        ({"VIGIL_LLM_PRICE_INPUT_PER_1M": "-1"}, "VIGIL_LLM_PRICE_INPUT_PER_1M: Input should be"),
        ({"VIGIL_LLM_PRICE_INPUT_PER_1M": "0.15 USD"}, "VIGIL_LLM_PRICE_INPUT_PER_1M: Input"),
        ({"VIGIL_LLM_PRICE_OUTPUT_PER_1M": "nan"}, "VIGIL_LLM_PRICE_OUTPUT_PER_1M: Input"),
        ({"VIGIL_LLM_PRICE_OUTPUT_PER_1M": "inf"}, "VIGIL_LLM_PRICE_OUTPUT_PER_1M: Input"),
    ],
)
def test_bad_usage_settings_stop_with_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    from tests.core.test_config import run_env

    result = run_env(tmp_path, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_prices_are_plain_numbers(tmp_path: Path) -> None:
    from tests.core.test_config import run_env

    result = run_env(tmp_path, {"VIGIL_LLM_PRICE_INPUT_PER_1M": "0.15"})
    assert result.returncode == 0, result.stderr
