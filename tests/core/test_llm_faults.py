"""A dead, failing, stalling or garbling model gives one clear reply, never a crash."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from core.errors import LLMBadResponse, LLMTimeout, LLMUnavailable
from core.llm import LLMClient
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM, dead_url


def client_for(url: str, **kwargs: object) -> LLMClient:
    options: dict = {
        "timeout_s": 1.0,
        "connect_timeout_s": 0.5,
        "max_retries": 1,
        "backoff_s": 0.01,
    }
    options.update(kwargs)
    return LLMClient(base_url=url, model="fake", **options)


async def collect(client: LLMClient) -> str:
    try:
        return "".join([d async for d in client.stream([{"role": "user", "content": "hi"}])])
    finally:
        await client.aclose()


async def test_streams_deltas_in_order(fake_llm: FakeLLM) -> None:
    fake_llm.reply = "alpha beta gamma"
    assert await collect(client_for(fake_llm.url)) == "alpha beta gamma"
    request = fake_llm.requests[-1]
    assert request["stream"] is True
    assert request["model"] == "fake"


async def test_refused_connection_names_url_and_setting() -> None:
    url = dead_url()
    client = client_for(url)
    with pytest.raises(LLMUnavailable) as info:
        await collect(client)
    assert url in info.value.message
    assert "connection refused" in info.value.message
    assert "VIGIL_LLM_BASE_URL" in info.value.message
    assert client.status.state == "unreachable"


async def test_retries_5xx_before_the_first_token(fake_llm: FakeLLM) -> None:
    fake_llm.fail_times = 1
    fake_llm.fail_status = 503
    fake_llm.reply = "recovered"
    assert await collect(client_for(fake_llm.url)) == "recovered"
    assert len(fake_llm.requests) == 2


async def test_persistent_500_gives_unavailable(fake_llm: FakeLLM) -> None:
    fake_llm.fail_times = -1
    with pytest.raises(LLMUnavailable) as info:
        await collect(client_for(fake_llm.url))
    assert "HTTP 500" in info.value.message
    assert len(fake_llm.requests) == 2  # one try + one retry


async def test_stall_past_timeout(fake_llm: FakeLLM) -> None:
    fake_llm.reply = "one two three"
    fake_llm.stall_after_chunks = 1
    fake_llm.stall_s = 3
    with pytest.raises(LLMTimeout) as info:
        await collect(client_for(fake_llm.url, timeout_s=0.5))
    assert "VIGIL_LLM_TIMEOUT_S" in info.value.message


@pytest.mark.parametrize("knob", ["garbage", "no_choices"])
async def test_malformed_stream(fake_llm: FakeLLM, knob: str) -> None:
    setattr(fake_llm, knob, True)
    with pytest.raises(LLMBadResponse) as info:
        await collect(client_for(fake_llm.url))
    assert "OpenAI-compatible" in info.value.message


async def test_wrong_model_and_bad_key(fake_llm: FakeLLM) -> None:
    fake_llm.fail_times, fake_llm.fail_status = 1, 404
    with pytest.raises(LLMUnavailable) as info:
        await collect(client_for(fake_llm.url))
    assert "VIGIL_LLM_MODEL" in info.value.message
    fake_llm.fail_times, fake_llm.fail_status = 1, 401
    with pytest.raises(LLMUnavailable) as info:
        await collect(client_for(fake_llm.url))
    assert "VIGIL_LLM_API_KEY" in info.value.message


async def test_plain_json_answer_is_accepted(fake_llm: FakeLLM) -> None:
    fake_llm.plain_json = True
    fake_llm.reply = "whole answer"
    assert await collect(client_for(fake_llm.url)) == "whole answer"


async def test_api_key_is_sent_as_bearer() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(
            200,
            text='data: {"choices":[{"delta":{"content":"ok"}}]}\n\ndata: [DONE]\n\n',
            headers={"content-type": "text/event-stream"},
        )

    from pydantic import SecretStr

    client = LLMClient(
        base_url="http://model.invalid/v1",
        model="m",
        api_key=SecretStr("sk-secret"),
        transport=httpx.MockTransport(handler),
    )
    assert await collect(client) == "ok"
    assert seen == ["Bearer sk-secret"]


@pytest.mark.parametrize(
    ("knob", "value", "code"),
    [("fail_times", -1, "llm_unavailable"), ("garbage", True, "llm_bad_response")],
)
def test_chat_turn_survives_model_failure(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory, knob: str, value: object, code: str
) -> None:
    server: LiveServer = live_server_factory(make_settings(tmp_path, llm_base_url=fake_llm.url))
    setattr(fake_llm, knob, value)
    response = server.chat("f", "hello?")
    assert response.status_code == 200
    body = response.json()
    assert body["error"] == {"code": code}
    assert body["reply"].startswith("⚠️ ")
    setattr(fake_llm, knob, 0 if knob == "fail_times" else False)
    fake_llm.reply = "back again"
    assert server.chat("f", "and now?").json()["reply"] == "back again"
    history = server.client.get("/api/chats/f/messages").json()["messages"]
    assert [m["role"] for m in history] == ["assistant", "user", "user"]


def test_dead_model_reply_and_degraded_health(tmp_path: Path, live_server_factory) -> None:
    server: LiveServer = live_server_factory(
        make_settings(tmp_path, llm_base_url=dead_url(), llm_max_retries=0)
    )
    body = server.chat("dead", "anyone there?").json()
    assert body["error"] == {"code": "llm_unavailable"}
    assert "not reachable" in body["reply"]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["llm"] == "unreachable"


def test_stream_reports_model_failure_as_text(tmp_path: Path, live_server_factory) -> None:
    server: LiveServer = live_server_factory(
        make_settings(tmp_path, llm_base_url=dead_url(), llm_max_retries=0)
    )
    response = server.chat("dead", "hi", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200
    assert "event: done" in response.text
    assert "llm_unavailable" in response.text


async def test_a_pair_split_across_chunks_arrives_whole() -> None:
    body = (
        'data: {"choices":[{"delta":{"content":"smile \\ud83d"}}]}\n\n'
        'data: {"choices":[{"delta":{"content":"\\ude00!"}}]}\n\n'
        'data: {"choices":[{"delta":{"content":"lone \\ud800"}}]}\n\ndata: [DONE]\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    client = LLMClient(
        base_url="http://m.invalid/v1", model="m", transport=httpx.MockTransport(handler)
    )
    deltas = [d async for d in client.stream([{"role": "user", "content": "hi"}])]
    await client.aclose()
    assert "".join(deltas) == "smile 😀!lone \ufffd"
    for delta in deltas:
        delta.encode("utf-8")  # every delta is valid on its own


def test_url_passwords_never_reach_health_replies_or_logs(
    tmp_path: Path, live_server_factory
) -> None:
    url = dead_url().replace("http://", "http://alice:S3cretPassw0rd@")
    server: LiveServer = live_server_factory(make_settings(tmp_path, llm_base_url=url))
    reply = server.chat("pw", "hello").json()["reply"]
    health = httpx.get(server.url + "/health").text
    server.stop()
    logs = (tmp_path / "logs" / "system.log").read_text() if (tmp_path / "logs").exists() else ""
    for text in (reply, health, logs):
        assert "S3cretPassw0rd" not in text
    assert "http://127.0.0.1:" in reply
    assert "S3cretPassw0rd" in server.settings.secrets()
