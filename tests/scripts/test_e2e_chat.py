"""The foundation's promise end to end: start.sh, chat, stop.sh, start.sh, nothing lost.

Runs the real scripts in a temporary copy of the checkout (fixtures shared
with test_start_stop.py), chats over HTTP with a fake model, restarts, and
checks that history and the model's context survived.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.scripts.test_start_stop import env, install, run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def test_history_and_context_survive_a_restart(
    install,  # noqa: F811 (a fixture imported above)
    env: dict[str, str],  # noqa: F811
    fake_llm: FakeLLM,
) -> None:
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
    auth = {"Authorization": f"Bearer {env['VIGIL_ADMIN_TOKEN']}"}
    started = run(install, env, "start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"model fake answered at {fake_llm.url}" in started.stdout

    reply = httpx.post(
        f"{url}/api/chats/e2e/messages", json={"text": "my name is Ada"}, headers=auth, timeout=20
    )
    assert reply.json()["reply"] == "echo: my name is Ada"
    assert run(install, env, "stop.sh").returncode == 0

    again = run(install, env, "start.sh")
    assert again.returncode == 0, again.stdout + again.stderr
    history = httpx.get(f"{url}/api/chats/e2e/messages", headers=auth, timeout=10).json()
    assert [m["content"] for m in history["messages"]] == ["echo: my name is Ada", "my name is Ada"]

    httpx.post(
        f"{url}/api/chats/e2e/messages", json={"text": "what is my name?"}, headers=auth, timeout=20
    )
    context = [m["content"] for m in fake_llm.requests[-1]["messages"][1:]]
    assert context == ["my name is Ada", "echo: my name is Ada", "what is my name?"]


def test_fresh_start_without_a_model_gives_a_clear_reply(install, env: dict[str, str]) -> None:  # noqa: F811
    from tests.fake_llm import dead_url

    env = {**env, "VIGIL_LLM_BASE_URL": dead_url()}
    started = run(install, env, "start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "no model reachable" in started.stdout
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["telegram"] == "not_configured"
    assert health["status"] == "degraded"
    body = httpx.post(
        f"{url}/api/chats/new/messages",
        json={"text": "hello"},
        headers={"Authorization": f"Bearer {env['VIGIL_ADMIN_TOKEN']}"},
        timeout=20,
    ).json()
    assert body["error"] == {"code": "llm_unavailable"}
    assert "VIGIL_LLM_BASE_URL" in body["reply"]
    assert run(install, env, "stop.sh").returncode == 0
