"""Under the real supervisor: the worker child runs tasks, the CLI sees both children."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.schedule import DEFAULT_SCHEDULE
from tests.operator_cli import MAIN, cli_env, rows, run_cli


def _wait(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _healthy(settings: Settings) -> bool:
    try:
        return httpx.get(settings.base_url + "/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_supervised_worker_and_operator_commands(filled: Settings, tmp_path: Path) -> None:
    schedule = {name: "off" for name in DEFAULT_SCHEDULE}
    schedule["maintenance"] = "* * * * *"
    env = cli_env(
        filled,
        task_schedule=json.dumps(schedule),
        governor_enabled="false",
        supervisor_stop_timeout_s="5",
    )
    supervisor = subprocess.Popen(
        [sys.executable, str(MAIN), "supervise"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    filled.pid_file.write_text(f"{supervisor.pid}\n")  # what start.sh does
    try:
        assert _wait(lambda: _healthy(filled)), "the server did not come up"
        assert _wait(
            lambda: bool(
                rows(
                    filled.db_path,
                    "SELECT 1 FROM server_tasks"
                    " WHERE name = 'maintenance' AND status = 'completed'",
                )
            )
        ), "the supervised worker did not run the periodic task"

        status = run_cli(filled, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["server"]["state"] == "running"
        assert report["supervisor"]["running"] is True
        children = report["supervisor"]["children"]
        assert children["server"]["state"] == children["worker"]["state"] == "running"
        assert report["database"]["tasks"]["recent"][0]["name"] == "maintenance"

        assert run_cli(filled, "backup", "--name", "live").returncode == 0
        refused = run_cli(filled, "restore", "live", "--confirm")
        assert refused.returncode == 1
        assert "the server is running (its supervisor holds the lock)" in refused.stderr
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, stderr[-2000:]
