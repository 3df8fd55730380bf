"""Two checkouts on one data directory: the live Vigil is judged by its supervisor's lock.

A second copy of the scripts and code, started with ``VIGIL_DATA_DIR`` pointing
at the first one's data, must find the first Vigil running (whatever its
command line or working directory) and touch nothing: not the PID file, not
the live database's WAL, not the schema. A ``main.py supervise`` run directly
(as systemd does, no PID file) is left alone by start.sh and stop.sh alike.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from core.database import connect_sync
from core.schedule import DEFAULT_SCHEDULE
from tests.fake_llm import free_port
from tests.processes import wait_for
from tests.scripts import test_start_stop as start_stop
from tests.scripts.test_start_stop import group_members, is_running, run

pytestmark = pytest.mark.slow

# The copy of the checkout and its environment (fixtures of test_start_stop.py).
install = start_stop.install
env = start_stop.env


@pytest.fixture
def second(install: Path, tmp_path: Path) -> Path:
    """Another copy of the checkout (scripts + code), without data of its own."""
    copy = tmp_path / "second"
    shutil.copytree(install, copy, ignore=shutil.ignore_patterns("data", "logs", "__pycache__"))
    return copy


def _running_children(url: str) -> list[int] | None:
    status = httpx.get(f"{url}/restart/status", timeout=5).json()["children"]
    pids = [c["pid"] for c in status.values() if c["state"] == "running"]
    return pids if len(pids) == len(status) == 2 else None


def _write_a_turn(url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{url}/api/chats/alice/messages", json={"text": "hello"}, headers=headers, timeout=20
    )
    assert response.status_code == 200, response.text


def test_a_second_checkout_leaves_the_live_vigil_alone(
    install: Path, env: dict[str, str], second: Path
) -> None:
    # No scheduled task may checkpoint the WAL meanwhile (the daily maintenance does).
    off = {name: "off" for name in DEFAULT_SCHEDULE}
    env = {**env, "VIGIL_TASK_SCHEDULE": json.dumps(off)}
    assert run(install, env, "start.sh").returncode == 0
    data = install / "data"
    pid_file, wal = data / "vigil.pid", data / "system.db-wal"
    supervisor = int(pid_file.read_text())
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
    children = wait_for(lambda: _running_children(url), 20, "the server and the worker")
    _write_a_turn(url, env["VIGIL_ADMIN_TOKEN"])
    assert wal.exists() and wal.stat().st_size > 0  # the live WAL holds the turn
    pid_before = (pid_file.read_text(), pid_file.stat().st_ino, pid_file.stat().st_mtime_ns)
    wal_before = wal.stat().st_size

    # Its own port (the port check would stop it otherwise), the first one's data.
    other = {
        **env,
        "VIGIL_DATA_DIR": str(data),
        "VIGIL_LOGS_DIR": str(second / "logs"),
        "VIGIL_PORT": str(free_port()),
    }
    started = run(second, other, "start.sh")

    assert started.returncode != 0
    assert f"already running (pid {supervisor}, started from {install})" in started.stderr
    assert "removing stale PID file" not in started.stdout
    assert "database:" not in started.stdout + started.stderr  # no recovery, no migration
    assert (pid_file.read_text(), pid_file.stat().st_ino, pid_file.stat().st_mtime_ns) == (
        pid_before
    )
    assert wal.stat().st_size >= wal_before > 0  # not checkpointed away under the server
    assert is_running(supervisor) and all(is_running(pid) for pid in children)

    # The second checkout's pre-flight alone (what systemd's ExecStartPre runs) refuses too.
    preflight = subprocess.run(
        [str(Path(env["VIGIL_VENV"]) / "bin" / "python"), "main.py", "preflight"],
        cwd=second,
        env=other,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert preflight.returncode != 0
    assert f"already running (pid {supervisor}" in preflight.stderr
    assert "nothing was checked or changed" in preflight.stderr

    stopped = run(install, env, "stop.sh")  # the first checkout's stop.sh still stops all
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
    assert not any(is_running(pid) for pid in [supervisor, *children])
    assert group_members(supervisor) == [] and not pid_file.exists()
    rows = connect_sync(data / "system.db").execute("SELECT count(*) FROM messages").fetchone()
    assert rows[0] == 2  # the turn survived: question and answer


def test_a_supervisor_without_pid_file_is_left_alone_by_the_scripts(
    install: Path, env: dict[str, str]
) -> None:
    """``main.py supervise`` run directly (systemd's ExecStart): start.sh and stop.sh refuse."""
    data = install / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    (data / "vigil.pid").write_text("999999999\n")  # an old start.sh's, long dead
    supervisor = subprocess.Popen(
        [sys.executable, "main.py", "supervise"],
        cwd=install,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
        children = wait_for(lambda: _try(lambda: _running_children(url)), 30, "the children")

        started = run(install, env, "start.sh")
        assert started.returncode != 0
        assert f"already running (pid {supervisor.pid}, started from {install})" in started.stderr
        assert "not started by scripts/start.sh" in started.stderr

        stopped = run(install, env, "stop.sh")
        assert stopped.returncode != 0
        assert f"Vigil runs (pid {supervisor.pid}" in stopped.stderr
        assert "systemctl stop vigil" in stopped.stderr
        assert supervisor.poll() is None
        # stop.sh signalled nothing: no child stopped or died. (On a loaded machine
        # the watchdog may restart a slow child meanwhile: the supervisor's work,
        # recorded as such, not stop.sh's.)
        restarts = (
            connect_sync(data / "system.db")
            .execute("SELECT child, reason, exit_code, signal, detail FROM restarts")
            .fetchall()
        )
        assert all(reason == "watchdog" for _, reason, *_ in restarts), restarts
        children = wait_for(lambda: _try(lambda: _running_children(url)), 30, "the children")
        assert (data / "vigil.pid").read_text() == "999999999\n"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
    assert not any(is_running(pid) for pid in children)
    (data / "vigil.pid").unlink()


def _try(fn: Callable[[], list[int] | None]) -> list[int] | None:
    try:
        return fn()
    except (httpx.HTTPError, KeyError, ValueError):
        return None
