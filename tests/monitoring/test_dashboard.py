"""The dashboard page in a real Chromium against a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.browser import chromium
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # real Chromium


def test_dashboard_draws_charts_and_shows_sessions_only_with_the_token(
    tmp_path, fake_llm: FakeLLM, live_server_factory
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, governor_sample_interval_s=0.1)
    server: LiveServer = live_server_factory(settings)
    assert server.chat("dash", "hello").status_code == 200
    page_html = httpx.get(server.url + "/dashboard")
    assert page_html.status_code == 200 and "<canvas" in page_html.text
    assert "http://" not in page_html.text and "https://" not in page_html.text  # no CDN
    with chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/dashboard")
        page.wait_for_selector("#cards .card")
        assert "health score" in page.inner_text("#cards")
        page.wait_for_function(
            "document.getElementById('sessions-note').textContent.includes('admin token')"
        )
        assert page.locator("#sessions tr").count() == 0  # no chat ids without the token
        drawn = page.evaluate(
            """() => {
              const c = document.getElementById('c-memory');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let lit = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) lit++;
              return lit;
            }"""
        )
        assert drawn > 100
        page.fill("#token", server.token)
        page.click("#save")
        page.wait_for_selector("#sessions tr")
        assert "local:dash" in page.inner_text("#sessions")
        page.wait_for_function(
            "document.getElementById('restart-note').textContent.includes('restarts recorded')"
        )
        page.click("#cleanup")
        page.wait_for_function(
            "document.getElementById('note').textContent.includes('cleanup freed')"
        )
        assert errors == []


def test_a_child_killed_by_a_signal_shows_the_signal_by_name(
    tmp_path, fake_llm: FakeLLM, live_server_factory
) -> None:
    import time

    from core.database import connect_sync

    settings = make_settings(tmp_path, llm_base_url=fake_llm.url)
    server: LiveServer = live_server_factory(settings)
    conn = connect_sync(settings.db_path)
    conn.execute(
        "INSERT INTO restarts (at, child, reason, exit_code, signal) VALUES (?, 'worker', 'crash',"
        " NULL, 9)",
        (time.time(),),
    )
    conn.close()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(server.url + "/dashboard")
        page.wait_for_selector("#restart-history tr")
        row = page.inner_text("#restart-history")
        assert "SIGKILL" in row and "signal 9" not in row


def test_dashboard_shows_tokens_per_hour_and_the_top_users_with_the_token(
    tmp_path, fake_llm: FakeLLM, live_server_factory
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, llm_price_input_per_1m=1.5)
    server: LiveServer = live_server_factory(settings)
    for user in ("ada", "ada", "bo"):
        server.client.post("/api/chats/dash/messages", json={"text": "hello", "user": user})
    with chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/dashboard")
        page.wait_for_function(
            "document.getElementById('usage-note').textContent.includes('admin token')"
        )
        assert page.locator("#top-users tr").count() == 0  # no user ids without the token
        page.fill("#token", server.token)
        page.click("#save")
        page.wait_for_function(
            "document.getElementById('top-users').textContent.includes('api:ada')"
        )
        rows = page.locator("#top-users tr").all_inner_texts()
        assert rows[0].startswith("api:ada") and rows[1].startswith("api:bo")
        assert "today:" in page.inner_text("#usage-note")
        drawn = page.evaluate(
            """() => {
              const c = document.getElementById('c-tokens');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let blue = 0;
              for (let i = 0; i < d.length; i += 4)
                if (d[i + 3] && d[i] < 120 && d[i + 2] > 200) blue++;  // the prompt line
              return blue;
            }"""
        )
        assert drawn > 20
        assert errors == []
