"""Faults the server must survive: a full disk, a database that vanishes, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fake_llm import FakeLLM
from tests.processes import AUTH, MAIN, vigil_env

pytestmark = pytest.mark.slow  # real server processes, kill -9


def test_full_disk_gives_a_clear_error_and_recovers(live_server: LiveServer) -> None:
    assert live_server.chat("disk", "before").status_code == 200

    async def fill(runtime) -> int:
        pages = runtime.db.pragma("page_count")
        runtime.db.pragma(f"max_page_count = {pages}")  # SQLITE_FULL from here on
        return int(pages)

    pages = live_server.call(fill)
    response = live_server.chat("disk", "x " * 5000)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "disk_full"
    assert "disk is full" in error["message"]
    assert httpx.get(live_server.url + "/health/live").status_code == 200

    async def free(runtime) -> None:
        runtime.db.pragma(f"max_page_count = {pages * 100}")

    live_server.call(free)
    again = live_server.chat("disk", "after")
    assert again.status_code == 200
    history = live_server.client.get("/api/chats/disk/messages").json()["messages"]
    assert [m["content"] for m in history] == ["echo: after", "after", "echo: before", "before"]


def test_kill_9_loses_no_committed_message(tmp_path: Path, fake_llm: FakeLLM) -> None:
    env = vigil_env(tmp_path, fake_llm.url)
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/health/live", timeout=1)
                return proc
            except httpx.HTTPError:
                time.sleep(0.05)
        proc.kill()
        raise AssertionError("server did not start")

    server = start()
    for i in range(20):
        response = httpx.post(
            f"{url}/api/chats/k9/messages", json={"text": f"m{i}"}, headers=AUTH, timeout=10
        )
        assert response.status_code == 200
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)

    server = start()
    try:
        history = httpx.get(
            f"{url}/api/chats/k9/messages", params={"limit": 100}, headers=AUTH, timeout=10
        ).json()
        assert len(history["messages"]) == 40
        assert history["messages"][0]["content"] == "echo: m19"
        reply = httpx.post(
            f"{url}/api/chats/k9/messages", json={"text": "still here?"}, headers=AUTH, timeout=10
        )
        assert reply.json()["reply"] == "echo: still here?"
    finally:
        server.terminate()
        server.wait(20)
