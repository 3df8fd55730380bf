"""A server reachable from the network: an explicit token, no public API map, Host checked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.processes import MAIN, vigil_env


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "supervise"])
def test_public_bind_without_a_token_is_refused_in_one_line(tmp_path: Path, command: str) -> None:
    env = vigil_env(tmp_path, "http://127.0.0.1:9/v1", host="0.0.0.0", admin_token=None)
    env.pop("VIGIL_ADMIN_TOKEN", None)
    done = subprocess.run(
        [sys.executable, str(MAIN), command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "VIGIL_ADMIN_TOKEN" in lines[0] and "0.0.0.0" in lines[0]
    assert not (tmp_path / "data" / "admin_token").exists()  # no token made up and used


@pytest.mark.parametrize(
    ("host", "token", "refused"),
    [
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.168.1.10", None, True),
        ("vigil.example.com", None, True),
        ("0.0.0.0", "a-long-secret-chosen", False),
        ("0.0.0.0", "   ", True),
    ],
)
def test_which_binds_need_a_token(host: str, token: str | None, refused: bool) -> None:
    settings = Settings(_env_file=None, host=host, admin_token=token)  # type: ignore[call-arg]
    assert (settings.public_bind_problem() is not None) is refused


def test_docs_are_off_and_foreign_hosts_get_400(live_server: LiveServer) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(live_server.url + path).status_code == 404, path
    port = live_server.settings.port
    for host in ("127.0.0.1", "localhost", "[::1]", f"127.0.0.1:{port}", f"localhost:{port}"):
        response = httpx.get(live_server.url + "/health/live", headers={"Host": host})
        assert response.status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        response = httpx.get(live_server.url + "/health", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.json()["error"]["code"] == "invalid_host"
        assert "VIGIL_ALLOWED_HOSTS" in response.json()["error"]["message"]


def test_allowed_hosts_and_public_docs_settings(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        public_docs=True,
        allowed_hosts="vigil.example.com, *.vigil.test",
    )
    server = live_server_factory(settings)
    assert httpx.get(server.url + "/openapi.json").status_code == 200
    for host, code in [
        ("vigil.example.com", 200),
        ("a.vigil.test", 200),
        ("127.0.0.1", 200),  # what the supervisor's watchdog sends: always allowed
        ("localhost", 400),
        ("other.example", 400),
    ]:
        got = httpx.get(server.url + "/health/live", headers={"Host": host}).status_code
        assert got == code, host
