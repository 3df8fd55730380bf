"""Helpers for tests that run Vigil as real processes (serve, supervise, scripts).

Every process gets its own data/logs dirs and a free port through ``VIGIL_*``
variables, runs with ``cwd`` in the test's tmp dir (so no stray ``.env`` is
read), and short supervisor timings so the whole area stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.fake_llm import free_port

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "main.py"
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def vigil_env(tmp_path: Path, llm_url: str, **overrides: Any) -> dict[str, str]:
    """A clean environment: no inherited VIGIL_* or systemd variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIGIL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
    }
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "logs_dir": tmp_path / "logs",
        "port": free_port(),
        "admin_token": TOKEN,
        "llm_base_url": llm_url,
        "llm_model": "fake",
        "llm_timeout_s": 10,
        "llm_max_retries": 0,
        "llm_probe_interval_s": 300,
        "restart_grace_s": 20,
        "supervisor_backoff_initial_s": 0.1,
        "supervisor_backoff_max_s": 0.4,
        "supervisor_flap_max": 3,
        "supervisor_flap_window_s": 60,
        "supervisor_watchdog_timeout_s": 2.0,
        "supervisor_stop_timeout_s": 5,
        "governor_enabled": False,
        "debug_hooks": True,
    }
    values.update(overrides)
    env.update({f"VIGIL_{k.upper()}": str(v) for k, v in values.items() if v is not None})
    return env


class VigilProcess:
    """``python main.py <command>`` as a child of the test."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        self.data_dir = Path(env["VIGIL_DATA_DIR"])
        self.logs_dir = Path(env["VIGIL_LOGS_DIR"])
        self.proc = subprocess.Popen(
            [sys.executable, str(MAIN), *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def db(self) -> Path:
        return self.data_dir / "system.db"

    def wait_live(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until /health/live answers; returns its body (has the server pid)."""
        return wait_for(lambda: self._live(), timeout, "the server to answer /health/live")

    def _live(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited early with {self.proc.returncode}: {self.log()}")
        try:
            response = self.client.get("/health/live", timeout=1.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def supervisor_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.data_dir / "supervisor.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def restarts(self) -> list[dict[str, Any]]:
        return query(self.db, "SELECT * FROM restarts ORDER BY id")

    def log(self) -> str:
        try:
            return (self.logs_dir / "system.log").read_text()[-3000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        return self.proc.returncode

    def kill_tree(self) -> None:
        """Last-resort cleanup: the process and any child it left behind."""
        state = self.supervisor_state()
        for child in state.get("children", {}).values():
            if child.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child["pid"], signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def vigil(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[VigilProcess]:
    process = VigilProcess(tmp_path, env, *args)
    try:
        yield process
    finally:
        process.stop()
        process.kill_tree()


class StreamedTurn:
    """A streamed local-chat turn read in a thread; records its SSE events."""

    def __init__(self, url: str, chat: str, text: str) -> None:
        self.url, self.chat, self.text = url, chat, text
        self.events: list[tuple[str, str]] = []
        self.done: dict[str, Any] | None = None
        self.error: Exception | None = None
        self.first_delta = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StreamedTurn:
        self._thread.start()
        return self

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError as exc:  # the server was killed under the stream
            self.error = exc
        self.first_delta.set()

    def _read(self) -> None:
        body = {"text": self.text, "stream": True}
        url = f"{self.url}/api/chats/{self.chat}/messages"
        with httpx.stream("POST", url, json=body, headers=AUTH, timeout=30) as response:
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, line[6:]))
                    if event == "delta":
                        self.first_delta.set()
                    if event == "done":
                        self.done = json.loads(line[6:])


class Chatter(threading.Thread):
    """Posts numbered messages to one chat until ``stop``; remembers what got a 200.

    ``resets``: every 25th message also resets the chat's context.
    """

    def __init__(self, url: str, chat: str, stop: threading.Event, *, resets: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.chat, self.stop, self.resets = url, chat, stop, resets
        self.acked: list[str] = []
        self.errors: dict[int, int] = {}
        self.sent = 0
        self.resets_done = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=10.0) as client:
            while not self.stop.is_set():
                text = f"{self.chat} #{self.sent}"
                self.sent += 1
                try:
                    reply = client.post(f"/api/chats/{self.chat}/messages", json={"text": text})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the server is down: try again
                    continue
                if reply.status_code == 200:
                    self.acked.append(text)
                else:
                    self.errors[reply.status_code] = self.errors.get(reply.status_code, 0) + 1
                    time.sleep(0.05)
                if self.resets and self.sent % 25 == 0:
                    # A reset starts a new context; the history stays in the database.
                    try:
                        reset = client.delete(f"/api/chats/{self.chat}/context")
                        self.resets_done += reset.status_code == 200
                    except httpx.HTTPError:
                        pass
