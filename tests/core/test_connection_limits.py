"""The open port under a connection flood and slowloris: a real server process.

The server runs with a low open-file limit (256) for its process tree; the
test opens far more idle connections than that, and the server must keep
answering ``/health/live``, stay up, and keep its log small.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.processes import MAIN, vigil_env, wait_for

pytestmark = pytest.mark.slow
NOFILE = 256


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextlib.contextmanager
def low_fd_server(
    tmp_path: Path, **overrides: object
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with FakeLLM() as llm:
        env = vigil_env(tmp_path, llm.url, **overrides)
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "serve"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_low_nofile,
        )
        url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        try:
            wait_for(lambda: _live(url, proc), 30, "the server to answer /health/live")
            yield proc, url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _live(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"the server exited with {proc.returncode}"
    try:
        return httpx.get(url + "/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def _log_bytes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in (tmp_path / "logs").glob("system.log*"))


def test_flood_past_the_fd_limit_keeps_live_answering(tmp_path: Path) -> None:
    with low_fd_server(tmp_path, http_header_timeout_s=30) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        before = _log_bytes(tmp_path)
        held: list[socket.socket] = []
        try:
            answered = 0
            for _ in range(6):  # 6 x 200 idle connections: far past 256 descriptors
                held += _open_idle(port, 200)
                time.sleep(0.3)
                response = httpx.get(url + "/health/live", timeout=10)
                assert response.status_code == 200
                answered += 1
            assert answered == 6
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            assert fds < NOFILE
        finally:
            for sock in held:
                sock.close()
        assert proc.poll() is None  # no crash, no restart
        assert httpx.get(url + "/health/live", timeout=10).status_code == 200
        grown = _log_bytes(tmp_path) - before
        assert grown < 50_000, f"the log grew by {grown} bytes under the flood"


def test_slowloris_connection_is_closed_after_the_head_deadline(tmp_path: Path) -> None:
    with low_fd_server(tmp_path, http_header_timeout_s=1) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        def closed() -> bool:
            try:
                sock.sendall(b"X-a: b\r\n")  # a header line now and then, never the end
                sock.settimeout(0.3)
                return sock.recv(1024) == b""
            except TimeoutError:
                return False
            except OSError:
                return True  # reset by the server

        try:
            wait_for(closed, 15, "the server to close the slow connection", interval=0.2)
        finally:
            sock.close()
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            silent.settimeout(15)
            assert silent.recv(1024) == b""  # never sent a byte: closed too
        finally:
            silent.close()
        assert proc.poll() is None


def test_slowloris_on_a_kept_alive_connection_is_closed_too(tmp_path: Path) -> None:
    with low_fd_server(tmp_path, http_header_timeout_s=1, http_keepalive_s=1) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /health/live HTTP/1.1\r\n")  # the next head, never finished

            def closed() -> bool:
                try:
                    sock.sendall(b"X-a: b\r\n")  # bytes keep coming: no keep-alive timeout
                    sock.settimeout(0.3)
                    return sock.recv(1024) == b""
                except TimeoutError:
                    return False
                except OSError:
                    return True

            wait_for(closed, 15, "the server to close the slow keep-alive connection", 0.2)
        finally:
            sock.close()
        assert proc.poll() is None
