"""Voice through the real server: the lifespan builds the speech-to-text client
from settings, ``/health`` shows it in ``checks.stt`` (never changing the
status), the probe sees it come back, and a voice note handed to the running
ChatService is transcribed over HTTP and answered."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.api import LocalReply
from core.channel import IncomingMessage
from core.media import AudioClip
from tests.conftest import LiveServer, make_settings
from tests.core.media.audio_files import ogg_opus
from tests.fake_llm import FakeLLM

pytestmark = pytest.mark.slow


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_the_server_wires_stt_into_health_and_the_pipeline(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    with FakeLLM() as stt:
        stt.transcript = "remind me to water the plants"
        settings = make_settings(
            tmp_path,
            llm_base_url=fake_llm.url,
            stt_base_url=stt.url,
            stt_model="whisper-live",
            llm_probe_interval_s=0.2,
        )
        server = live_server_factory(settings)
        wait_for(lambda: server.client.get("/health").json()["checks"]["stt"]["status"] == "ok")
        health = server.client.get("/health").json()
        assert health["checks"]["stt"]["model"] == "whisper-live"
        assert health["checks"]["stt"]["url"] == stt.url

        async def send(runtime: Any) -> Any:
            clip = AudioClip(ogg_opus(2.0), duration_s=2)
            msg = IncomingMessage("local:live", "", user_id="api:ada", audio=clip)
            return await runtime.chat.handle(msg, LocalReply())

        result = server.call(send)
        assert result.transcript == "remind me to water the plants"
        assert result.reply == "echo: remind me to water the plants"
        assert stt.stt_requests[-1].model == "whisper-live"

        stt.models_status = 503  # the probe sees the server fail; health stays as it was
        wait_for(lambda: server.client.get("/health").json()["checks"]["stt"]["status"] == "error")
        health = server.client.get("/health").json()
        assert not any("stt" in reason for reason in health["reasons"])
        stt.models_status = 200
        wait_for(lambda: server.client.get("/health").json()["checks"]["stt"]["status"] == "ok")


def test_without_stt_health_says_disabled(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory(make_settings(tmp_path, llm_base_url=fake_llm.url))
    assert server.client.get("/health").json()["checks"]["stt"] == {"status": "disabled"}
    assert server.runtime.stt is None
