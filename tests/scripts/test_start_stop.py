"""scripts/start.sh and stop.sh for real, in a temporary copy of the checkout.

The copy reuses this checkout's virtualenv through ``VIGIL_VENV`` (copying
it would be slow); data, logs and the port are the copy's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.database import connect_sync, migrate_sync
from tests.fake_llm import FakeLLM
from tests.processes import ROOT, StreamedTurn, vigil_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("install")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture
def env(install: Path, fake_llm: FakeLLM) -> Iterator[dict[str, str]]:
    values = vigil_env(install, fake_llm.url, data_dir="data", logs_dir="logs")
    values.update({"VIGIL_VENV": str(ROOT / ".venv"), "VIGIL_START_TIMEOUT": "20"})
    yield values
    run(install, values, "stop.sh")  # never leave a running copy behind
    shutil.rmtree(install / "data", ignore_errors=True)
    shutil.rmtree(install / "logs", ignore_errors=True)


def run(install: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(install / "scripts" / script)],
        cwd=install,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_start_refuses_a_second_time_and_stop_leaves_nothing_behind(
    install: Path, env: dict[str, str]
) -> None:
    (install / "data").mkdir(exist_ok=True)
    # A recycled PID: alive, but not a Vigil of this installation.
    (install / "data" / "vigil.pid").write_text(f"{os.getpid()}\n")

    started = run(install, env, "start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "removing stale PID file" in started.stdout
    assert "telegram: not configured" in started.stdout
    assert "/health" in started.stdout and "logs/system.log" in started.stdout
    assert (install / "data" / ".scripts.lock").stat().st_mode & 0o777 == 0o600
    listen = f"listening on http://127.0.0.1:{env['VIGIL_PORT']} (this machine only)"
    assert listen in started.stdout
    # The token was set in the environment: no pointer to a file that does not exist.
    assert "token: the VIGIL_ADMIN_TOKEN you set" in started.stdout
    assert "admin_token" not in started.stdout
    assert (install / "logs" / "stdout.log").stat().st_mode & 0o777 == 0o600
    supervisor = int((install / "data" / "vigil.pid").read_text())
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    state = httpx.get(f"{url}/restart/status", timeout=5).json()
    assert state["auto_restart"]["supervised"] is True

    def all_running() -> list[int] | None:
        status = httpx.get(f"{url}/restart/status", timeout=5).json()["children"]
        pids = [c["pid"] for c in status.values() if c["state"] == "running"]
        return pids if len(pids) == len(status) else None

    children = wait_for(all_running, 20, "the server and the worker to run")
    assert "worker" in httpx.get(f"{url}/restart/status", timeout=5).json()["children"]

    again = run(install, env, "start.sh")
    assert again.returncode != 0
    assert "already running" in again.stderr
    assert is_running(supervisor)

    stopped = run(install, env, "stop.sh")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not any(is_running(pid) for pid in [supervisor, *children])
    assert group_members(supervisor) == []
    assert not (install / "data" / "vigil.pid").exists()
    rows = connect_sync(install / "data" / "system.db").execute(
        "SELECT reason, exit_code FROM restarts"
    )
    assert [tuple(r) for r in rows] == [("stop", 0)]

    twice = run(install, env, "stop.sh")
    assert twice.returncode == 0 and "not running" in twice.stdout


def test_start_refuses_a_corrupt_database_and_leaves_it_untouched(
    install: Path, env: dict[str, str]
) -> None:
    db = install / "data" / "system.db"
    conn = connect_sync(db)
    migrate_sync(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    data[4096 : 4096 * 3] = b"\x5a" * (4096 * 2)
    db.write_bytes(bytes(data))
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    result = run(install, env, "start.sh")

    assert result.returncode != 0
    assert "corrupt" in result.stderr and "scripts/vigilctl validate" in result.stderr
    assert "scripts/vigilctl restore" in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (install / "data" / "vigil.pid").exists()


def test_start_refuses_an_empty_database_file(install: Path, env: dict[str, str]) -> None:
    """A 0-byte system.db (what a failed copy leaves) is not a new install."""
    db = install / "data" / "system.db"
    db.parent.mkdir(mode=0o700, exist_ok=True)
    db.touch(mode=0o600)

    result = run(install, env, "start.sh")

    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if "vigil: error: the database" in line]
    assert len(error) == 1, result.stderr
    assert "empty: 0 bytes" in error[0] and "scripts/vigilctl validate" in error[0]
    assert "scripts/vigilctl restore <name> --confirm" in error[0]
    assert db.stat().st_size == 0 and not (install / "data" / "vigil.pid").exists()


def test_stop_kills_what_does_not_drain_within_its_timeout(
    install: Path, env: dict[str, str], fake_llm: FakeLLM
) -> None:

    fake_llm.reply = "slow " * 40
    fake_llm.token_delay_s = 0.5
    assert run(install, env, "start.sh").returncode == 0
    supervisor = int((install / "data" / "vigil.pid").read_text())
    url = f"http://127.0.0.1:{env['VIGIL_PORT']}"
    stream = StreamedTurn(url, "stuck", "go").start()
    assert stream.first_delta.wait(10)

    stopped = run(install, {**env, "VIGIL_STOP_TIMEOUT": "1"}, "stop.sh")

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "sending SIGKILL" in stopped.stdout
    assert group_members(supervisor) == []
    assert not (install / "data" / "vigil.pid").exists()
    stream.join()
    assert stream.done is None and stream.error is not None  # cut, as the operator chose
