"""SIGHUP against a real supervised tree (supervisor, server, worker as real processes):
the log files are reopened (logrotate-style) and the reloadable settings reloaded,
without a restart; an invalid settings file keeps the old ones and stops nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from core import reload
from core.config import Settings
from tests.fake_llm import FakeLLM
from tests.processes import VigilProcess, vigil, vigil_env, wait_for

pytestmark = pytest.mark.slow


def pids(sup: VigilProcess) -> dict[str, Any]:
    children = sup.supervisor_state().get("children", {})
    return {
        "supervisor": sup.proc.pid,
        "server": sup.client.get("/health/live").json()["pid"],
        "worker": children.get("worker", {}).get("pid"),
    }


def text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def test_sighup_reopens_logs_and_reloads_settings_without_a_restart(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    config = tmp_path / "vigil.json"
    config.write_text(json.dumps({"log_level": "INFO", "chat_queue_limit": 20}))
    env = vigil_env(tmp_path, fake_llm.url, config_file=config)
    with vigil(tmp_path, env, "supervise") as sup:
        sup.wait_live()
        wait_for(
            lambda: sup.supervisor_state()["children"]["worker"]["state"] == "running",
            30,
            "the worker",
        )
        wait_for(lambda: "worker started" in text(sup.logs_dir / "system.log"), 30, "the worker")
        before = pids(sup)
        logs = sup.logs_dir
        # logrotate: rename the files, then HUP
        for name in ("system.log", "tasks.log", "telegram.log"):
            if (logs / name).exists():
                (logs / name).rename(logs / f"{name}.1")
        config.write_text(
            json.dumps(
                {
                    "log_level": "DEBUG",  # reloaded everywhere
                    "chat_queue_limit": 7,  # reloaded by the server
                    "llm_temperature": 0.2,  # needs a server restart
                    "supervisor_retry_failed_s": 120,  # needs a full stop/start
                }
            )
        )
        os.kill(sup.proc.pid, signal.SIGHUP)

        new_log = logs / "system.log"
        for process in ("supervisor", "server", "worker"):
            wait_for(
                lambda p=process: f"reload: log_level INFO -> DEBUG ({p}, pid" in text(new_log),
                20,
                f"the {process}'s reload line in the new system.log",
            )
        current = text(new_log)
        assert "reload: chat_queue_limit 20 -> 7 (server" in current
        assert "changed but needs a restart: VIGIL_LLM_TEMPERATURE" in current
        assert "changed but needs a full stop/start: VIGIL_SUPERVISOR_RETRY_FAILED_S" in current
        assert "reload" not in text(logs / "system.log.1")  # the renamed file is left alone
        assert (logs / "tasks.log").exists()  # the worker's own file came back too
        assert pids(sup) == before  # nobody restarted
        assert sup.restarts() == []

        # the new level is in force: the supervisor's DEBUG lines show from now on
        os.kill(sup.proc.pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP forwarded to server" in text(new_log), 20, "a DEBUG line")
        # ... and the server has handled this HUP (it says again what needs a restart)
        # before the file is broken: else its late reload would read the broken file too
        wait_for(
            lambda: text(new_log).count("changed but needs a restart: VIGIL_LLM_TEMPERATURE") >= 2,
            20,
            "the server's second reload",
        )

        # an invalid settings file: the old settings stay, one error line, nothing stops
        config.write_text("{ not json")
        os.kill(sup.proc.pid, signal.SIGHUP)
        wait_for(lambda: "invalid settings, the old ones are kept" in text(new_log), 20, "error")
        wait_for(lambda: text(new_log).count("reload (worker") >= 1, 20, "the worker's reload")
        errors = [
            line
            for line in text(new_log).splitlines()
            if "invalid settings" in line and " - ERROR - " in line
        ]
        assert len(errors) == 1, errors
        assert pids(sup) == before
        assert sup.client.get("/health/live").status_code == 200

        # and HUP to the server directly (not through the supervisor) reloads it alone
        config.write_text(json.dumps({"log_level": "WARNING"}))
        os.kill(before["server"], signal.SIGHUP)
        wait_for(
            lambda: "reload: log_level DEBUG -> WARNING (server" in text(new_log), 20, "reload"
        )
        assert pids(sup) == before
    assert sup.proc.returncode == 0


def test_the_reload_table_says_when_each_setting_applies() -> None:
    names = set(Settings.model_fields)
    assert set(reload.SERVER_LIVE) <= names and set(reload.FULL_STOP_START) <= names
    assert not set(reload.SERVER_LIVE) & set(reload.FULL_STOP_START)
    docs = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    section = docs.split("## When a changed setting applies", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `VIGIL_")
    }
    for name in (*reload.SERVER_LIVE, *reload.FULL_STOP_START):
        assert reload.env_name(name) in rows, f"{reload.env_name(name)} missing from the table"
    for name in names:  # a setting listed (new ones may be missing: server restart)
        row = rows.get(reload.env_name(name))
        assert row is None or f"| {reload.applies_on(name)} |" in row, row


def test_sighup_after_the_logs_directory_was_moved_away_stops_nothing(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    # `mv logs logs.old; kill -HUP`: the supervisor's first log line raised
    # FileNotFoundError and the whole service went down.
    with vigil(tmp_path, vigil_env(tmp_path, fake_llm.url), "supervise") as sup:
        sup.wait_live()
        wait_for(
            lambda: sup.supervisor_state()["children"]["worker"]["state"] == "running",
            30,
            "the worker",
        )
        logs = sup.logs_dir
        wait_for(lambda: "worker started" in text(logs / "system.log"), 30, "the worker")
        before = pids(sup)
        logs.rename(tmp_path / "logs.old")

        os.kill(sup.proc.pid, signal.SIGHUP)

        for process in ("server", "worker"):
            line = f"reload ({process}, pid"
            wait_for(
                lambda line=line: line in text(logs / "system.log"),  # type: ignore[misc]
                20,
                f"the {process}'s reload line in a new logs/system.log",
            )
        assert "SIGHUP: reopening the log files" in text(logs / "system.log")
        assert sup.proc.poll() is None
        assert pids(sup) == before  # nobody died or restarted
        assert sup.restarts() == []
    assert sup.proc.returncode == 0
