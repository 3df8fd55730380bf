"""Shared fixtures: a fake model, settings on tmp dirs, a real uvicorn server.

``live_server`` runs the real app under a real uvicorn on a free loopback
port, in a background thread with its own event loop; ``server.call(fn)``
runs ``fn(runtime)`` (a coroutine function) on that loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from core.app import Runtime, create_app
from core.config import Settings
from tests.fake_llm import FakeLLM, free_port

TOKEN = "test-token"

# Hermetic: the operator's VIGIL_* (and systemd's) environment never changes a
# test's outcome. Tests that need a variable set it themselves.
# (VIGIL_CHROMIUM is not a setting: it points the browser tests at a Chromium.)
for _name in [n for n in os.environ if n.startswith("VIGIL_") and n != "VIGIL_CHROMIUM"]:
    del os.environ[_name]
for _name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
    os.environ.pop(_name, None)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for tests: tmp data/logs dirs, known admin token, no .env."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "logs_dir": tmp_path / "logs",
        "admin_token": TOKEN,
        "port": free_port(),
        "llm_timeout_s": 5.0,
        "llm_connect_timeout_s": 1.0,
        "llm_max_retries": 1,
        "llm_model": "fake",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture
def settings(tmp_path: Path, fake_llm: FakeLLM) -> Settings:
    return make_settings(tmp_path, llm_base_url=fake_llm.url)


class LiveServer:
    """A real uvicorn serving ``create_app(settings)`` in a background thread."""

    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        self.settings = settings
        self.app = create_app(settings, **app_kwargs)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.token = TOKEN
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0
        )

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()  # an unclosed loop is a ResourceWarning per server

    def start(self, timeout: float = 15.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.client.close()

    @property
    def runtime(self) -> Runtime:
        return self.app.state.vigil  # type: ignore[no-any-return]

    def call(self, fn: Callable[[Runtime], Awaitable[Any]], timeout: float = 30.0) -> Any:
        """Run ``fn(runtime)`` on the server's event loop and return its result."""
        assert self.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(fn(self.runtime), self.loop)
        return future.result(timeout)

    def chat(self, chat_id: str, text: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(f"/api/chats/{chat_id}/messages", json={"text": text}, **kwargs)


@pytest.fixture
def live_server_factory() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def factory(settings: Settings, **app_kwargs: Any) -> LiveServer:
        server = LiveServer(settings, **app_kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def live_server(settings: Settings, live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return live_server_factory(settings)
