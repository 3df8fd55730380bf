"""The web chat page in a real Chromium against a real server and fake model."""

from __future__ import annotations

import pytest

from tests.browser import chromium
from tests.conftest import LiveServer
from tests.fake_llm import FakeLLM

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # real Chromium


def test_chat_page_streams_a_reply_and_shows_history(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "Hello from the **model**, streamed word by word."
    fake_llm.token_delay_s = 0.01
    with chromium() as browser:
        page = browser.new_page()
        page.goto(live_server.url + "/")
        assert page.url.endswith("/chat")
        page.fill("#token", live_server.token)
        page.fill("#chat", "browser")
        page.fill("#text", "hi there")
        page.press("#text", "Enter")
        page.wait_for_selector(".assistant[data-state=done]")
        assert page.inner_text(".user") == "hi there"
        assert page.inner_text(".assistant") == "Hello from the model, streamed word by word."
        assert page.inner_text(".assistant strong") == "model"  # Markdown rendered
        page.wait_for_function("document.getElementById('status').textContent.includes('model')")

        page.reload()  # token and chat remembered; history comes back from the server
        page.wait_for_selector(".assistant")
        texts = page.locator(".msg").all_inner_texts()
        assert texts == ["hi there", "Hello from the model, streamed word by word."]


def test_model_text_cannot_inject_html(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "<img src=x onerror=alert(1)> **bold** `<b>code</b>`"
    with chromium() as browser:
        page = browser.new_page()
        page.goto(live_server.url + "/chat")
        page.fill("#token", live_server.token)
        page.fill("#text", "inject")
        page.press("#text", "Enter")
        page.wait_for_selector(".assistant[data-state=done]")
        assert page.locator(".assistant img").count() == 0
        assert page.inner_text(".assistant code") == "<b>code</b>"
        assert "<img src=x onerror=alert(1)>" in page.inner_text(".assistant")


def test_chat_page_shows_clear_errors(live_server: LiveServer) -> None:
    with chromium() as browser:
        page = browser.new_page()
        page.goto(live_server.url + "/chat")
        page.fill("#token", "wrong-token")
        page.fill("#text", "hello?")
        page.click("#send")
        page.wait_for_selector(".error")
        assert "admin token is wrong" in page.inner_text(".error")
