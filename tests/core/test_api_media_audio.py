"""Audio uploads to the local API (multipart ``audio``): transcribed by the
speech-to-text server, answered as text; every bad clip a 4xx with nothing stored.

A real uvicorn, the fake model server also serving ``/v1/audio/transcriptions``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, make_settings
from tests.core.media.audio_files import ogg_opus, wav
from tests.core.test_api_errors import error_of
from tests.core.test_api_media import stored
from tests.fake_llm import FakeLLM


def voice(data: bytes, name: str = "note.ogg", mime: str = "audio/ogg") -> tuple[str, Any]:
    return ("audio", (name, data, mime))


@pytest.fixture
def ears(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> LiveServer:
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, stt_base_url=fake_llm.url, max_voice_s=5
    )
    return live_server_factory(settings)


def test_an_audio_upload_is_transcribed_and_answered(ears: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.transcript = "water the plants"
    response = ears.client.post(
        "/api/chats/v/messages", files=[voice(ogg_opus(2.0))], data={"user": "ada"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transcript"] == "water the plants"
    assert body["reply"] == "echo: water the plants" and body["model"] == "fake"
    assert "notices" not in body  # the "🎤 ..." echo is the transcript field here
    (request,) = fake_llm.stt_requests
    assert request.filename == "note.ogg"
    user = ears.client.get("/api/chats/v/messages", params={"role": "user"}).json()
    assert [m["content"] for m in user["messages"]] == ["water the plants"]


def test_a_caption_and_a_streamed_reply(ears: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.transcript = "and buy milk"
    response = ears.client.post(
        "/api/chats/c/messages",
        files=[voice(wav(1.0), "memo.wav", "audio/wav")],
        data={"text": "shopping:", "stream": "1"},
    )
    assert response.status_code == 200, response.text
    events = [b.split("\n", 1) for b in response.text.split("\n\n") if b]
    kinds = [e[0].removeprefix("event: ") for e in events]
    assert kinds[-1] == "done"
    deltas = [json.loads(e[1].removeprefix("data: "))["text"] for e in events if "delta" in e[0]]
    assert deltas[0] == "\U0001f3a4 and buy milk"
    done = json.loads(events[-1][1].removeprefix("data: "))
    assert done["transcript"] == "and buy milk"
    assert done["reply"] == "echo: shopping:\n\nand buy milk"


@pytest.mark.parametrize(
    ("files", "status", "code", "words"),
    [
        ([voice(ogg_opus(9.0))], 413, "audio_too_long", "VIGIL_MAX_VOICE_S"),
        ([voice(b"definitely not audio")], 422, "bad_audio", "couldn't read"),
        ([voice(b"")], 422, "bad_audio", "empty"),
        ([("audio", "not a file")], 422, "invalid_request", "file"),
    ],
)
def test_bad_audio_is_refused_before_transcription(
    ears: LiveServer,
    fake_llm: FakeLLM,
    files: list[tuple[str, Any]],
    status: int,
    code: str,
    words: str,
) -> None:
    kwargs: dict[str, Any] = {"files": files}
    if files[0][1] == "not a file":
        kwargs = {"data": {"audio": "not a file"}}
    response = ears.client.post("/api/chats/bad/messages", **kwargs)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code and words in error["message"]
    assert not fake_llm.stt_requests and not fake_llm.requests
    assert stored(ears) == (0, 0, [])


@pytest.mark.parametrize("stream", ["false", "true"])
def test_audio_without_stt_says_voice_is_not_enabled(
    live_server: LiveServer, fake_llm: FakeLLM, stream: str
) -> None:
    response = live_server.client.post(
        "/api/chats/deaf/messages", files=[voice(ogg_opus(1.0))], data={"stream": stream}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert error_of(response)["code"] == "voice_not_enabled"
    assert stored(live_server) == (0, 0, [])


def test_audio_over_the_byte_limit_is_a_413(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory(
        make_settings(
            tmp_path, llm_base_url=fake_llm.url, stt_base_url=fake_llm.url, max_audio_bytes=2048
        )
    )
    response = server.client.post("/api/chats/big/messages", files=[voice(wav(1.0))])
    assert response.status_code == 413, response.text
    assert error_of(response)["code"] == "audio_too_long"
    assert "VIGIL_MAX_AUDIO_BYTES" in error_of(response)["message"]
    assert stored(server) == (0, 0, [])
    assert not fake_llm.stt_requests
