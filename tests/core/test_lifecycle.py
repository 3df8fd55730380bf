"""The server's graceful path: SIGTERM, sd_notify, /restart/status and /restart/force."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.processes import AUTH, StreamedTurn, query, vigil, vigil_env, wait_for


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self) -> list[float]:
        return [at for at, text in self.messages if text == "WATCHDOG=1"]

    def has(self, prefix: str) -> bool:
        return any(text.startswith(prefix) for _, text in self.messages)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.mark.slow
def test_sd_notify_under_the_supervisor_ready_and_pings_stop_while_the_loop_is_blocked(
    tmp_path: Path, fake_llm: FakeLLM, notify: NotifyListener
) -> None:
    # Under the supervisor, as systemd runs it (WATCHDOG_PID names the main process).
    env = vigil_env(tmp_path, fake_llm.url, supervisor_watchdog_timeout_s=30)
    env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    with vigil(tmp_path, env, "supervise", "--no-worker") as server:
        server.wait_live()
        wait_for(lambda: notify.has("READY=1"), 10, "READY=1")
        wait_for(lambda: len(notify.pings()) >= 3, 10, "watchdog pings")

        started = time.monotonic()
        blocked = server.client.post("/debug/block", params={"seconds": 1.5}, headers=AUTH)
        answered = time.monotonic()
        wait_for(lambda: any(at > answered for at in notify.pings()), 5, "pings to resume")

        assert blocked.status_code == 200
        # Pings every 0.1 s normally (~9 in this window); none while the loop slept.
        # At most one sent just before the block may be read late by a busy test.
        during = [at for at in notify.pings() if started + 0.3 < at < answered - 0.3]
        assert len(during) <= 1
        after = [at for at in notify.pings() if at > answered]
        assert after, "pings resume once the loop runs again"


@pytest.mark.slow
def test_sigterm_drains_a_streamed_reply_then_exits_0_with_a_record(
    tmp_path: Path, fake_llm: FakeLLM, notify: NotifyListener
) -> None:
    fake_llm.reply = "alpha beta gamma delta epsilon zeta eta theta"
    fake_llm.token_delay_s = 0.15
    env = vigil_env(tmp_path, fake_llm.url)
    env["NOTIFY_SOCKET"] = str(notify.path)
    with vigil(tmp_path, env, "serve") as server:
        server.wait_live()
        stream = StreamedTurn(server.url, "term", "go").start()
        assert stream.first_delta.wait(10)

        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: notify.has("STATUS=draining"), 5, "STATUS=draining")
        refused = server.client.post("/api/chats/late/messages", json={"text": "hi"}, headers=AUTH)
        live = server.client.get("/health/live")
        code = server.proc.wait(30)
        stream.join()

    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert live.status_code == 200  # liveness never depends on readiness
    assert code == 0
    assert stream.done is not None and stream.done["reply"] == fake_llm.reply
    rows = query(tmp_path / "data" / "system.db", "SELECT * FROM restarts")
    assert [(r["reason"], r["exit_code"], r["child"]) for r in rows] == [("stop", 0, "server")]
    assert "SIGTERM" in rows[0]["detail"]
    stored = query(
        tmp_path / "data" / "system.db",
        "SELECT content FROM messages WHERE chat_id = 'local:term' AND role = 'assistant'",
    )
    assert stored == [{"content": fake_llm.reply}]


# --- in-process: the routes -------------------------------------------------------------
@pytest.fixture
def debug_off(tmp_path: Path, fake_llm: FakeLLM) -> Settings:
    return make_settings(tmp_path, llm_base_url=fake_llm.url, debug_hooks=False)


def test_restart_status_shows_configuration_history_and_paging(live_server: LiveServer) -> None:
    async def seed(runtime: Any) -> None:
        for i, reason in enumerate(["crash", "watchdog", "forced"]):
            await runtime.db.write(
                "INSERT INTO restarts (at, child, reason, exit_code) VALUES (?, 'server', ?, ?)",
                (1000.0 + i, reason, i),
            )

    live_server.call(seed)
    first = httpx.get(f"{live_server.url}/restart/status", params={"limit": 2}).json()
    second = httpx.get(f"{live_server.url}/restart/status", params={"limit": 2, "offset": 2})

    assert [h["reason"] for h in first["history"]] == ["forced", "watchdog"]
    assert first["counts_24h"] == {}  # the seeded rows are from 1970
    assert first["total"] == 3 and first["next_offset"] == 2
    assert [h["reason"] for h in second.json()["history"]] == ["crash"]
    assert second.json()["next_offset"] is None
    config = first["auto_restart"]
    assert config["supervised"] is False  # a test server has no supervisor
    assert config["flap_max"] == live_server.settings.supervisor_flap_max
    assert config["grace_s"] == live_server.settings.restart_grace_s
    assert first["server"]["state"] == "running"
    assert first["next_scheduled_restart"] is None
    bad = httpx.get(f"{live_server.url}/restart/status", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "limit"


def test_force_needs_the_admin_token(live_server: LiveServer) -> None:
    url = f"{live_server.url}/restart/force"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert live_server.runtime.admission.draining is False


def test_force_drains_and_a_second_force_is_refused(live_server: LiveServer) -> None:
    first = live_server.client.post("/restart/force", json={"detail": "operator test"})
    second = live_server.client.post("/restart/force")
    chat = live_server.chat("x", "hello")
    health = live_server.client.get("/health")

    assert first.status_code == 202
    assert first.json()["supervised"] is False and "warning" in first.json()
    assert second.status_code == 409 and second.json()["error"]["code"] == "already_restarting"
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "restarting"
    assert health.status_code == 503 and "draining (forced)" in health.json()["reasons"]
    rows = wait_for(
        lambda: live_server.call(
            lambda rt: rt.db.fetchall("SELECT reason, exit_code, detail FROM restarts")
        ),
        5,
        "the restart record",
    )
    assert rows[0]["reason"] == "forced" and rows[0]["exit_code"] == 75
    assert "operator test" in rows[0]["detail"]


def test_force_rejects_unknown_fields(live_server: LiveServer) -> None:
    response = live_server.client.post("/restart/force", json={"reason": "crash"})
    assert response.status_code == 422
    assert live_server.runtime.admission.draining is False


def test_debug_block_does_not_exist_without_debug_hooks(
    debug_off: Settings, live_server_factory: Any
) -> None:
    server = live_server_factory(debug_off)
    response = server.client.post("/debug/block", params={"seconds": 5})
    assert response.status_code == 404


def test_the_governor_hook_restarts_immediately_without_waiting_for_turns(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "a b c d e f g h i j"
    fake_llm.token_delay_s = 0.3
    stream = StreamedTurn(live_server.url, "long", "go").start()
    assert stream.first_delta.wait(10)

    async def request(runtime: Any) -> bool:
        hook = runtime.request_restart
        with pytest.raises(ValueError):
            hook("because", "not a known reason")
        return bool(hook("governor_memory", "rss 1012 MB", immediate=True))

    assert live_server.call(request) is True
    rows = wait_for(
        lambda: live_server.call(lambda rt: rt.db.fetchall("SELECT * FROM restarts")),
        5,
        "the restart record",
    )
    in_flight = live_server.runtime.admission.in_flight
    stream.join()

    assert rows[0]["reason"] == "governor_memory" and rows[0]["exit_code"] == 75
    assert "rss 1012 MB" in rows[0]["detail"] and "1 turn(s) in flight cut" in rows[0]["detail"]
    assert in_flight == 1  # recorded while the reply was still streaming


def test_restart_status_shows_the_next_scheduled_restart(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, restart_schedule="04:00")
    server = live_server_factory(settings)
    status = server.client.get("/restart/status").json()

    assert status["auto_restart"]["schedule"] == "04:00"
    assert status["scheduled_restart"]["schedule"] == "04:00"
    assert "T04:00:00" in status["next_scheduled_restart"]


def test_a_stop_during_a_restart_drain_turns_it_into_a_stop(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply = "one two three four five"
    fake_llm.token_delay_s = 0.2
    stream = StreamedTurn(live_server.url, "mixed", "go").start()
    assert stream.first_delta.wait(10)

    async def restart_then_stop(runtime: Any) -> tuple[bool, bool]:
        lifecycle = runtime.lifecycle
        return lifecycle.request_restart("forced"), lifecycle.request_restart("signal", "SIGTERM")

    assert live_server.call(restart_then_stop) == (True, False)
    stream.join()
    rows = wait_for(
        lambda: live_server.call(lambda rt: rt.db.fetchall("SELECT * FROM restarts")),
        5,
        "the restart record",
    )
    assert stream.done is not None  # the reply still finished
    assert rows[0]["exit_code"] == 0
    assert live_server.runtime.lifecycle.exit_code == 0


@pytest.mark.slow
def test_sigterm_during_a_forced_restart_drain_exits_0(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "alpha beta gamma delta epsilon zeta"
    fake_llm.token_delay_s = 0.15
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "serve") as server:
        server.wait_live()
        stream = StreamedTurn(server.url, "drain", "go").start()
        assert stream.first_delta.wait(10)
        forced = server.client.post("/restart/force", headers=AUTH)
        assert forced.status_code == 202
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        stream.join()

    assert code == 0
    assert stream.done is not None  # the reply still finished
    rows = query(tmp_path / "data" / "system.db", "SELECT reason, exit_code FROM restarts")
    assert rows == [{"reason": "forced", "exit_code": 0}]
