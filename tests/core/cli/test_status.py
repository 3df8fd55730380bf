"""``vigilctl status`` at a glance: open alerts by severity, emergency mode, throttling,
maintenance, the backup state, children, Telegram and restarts (planned stops apart),
worst first, in the table and in ``--json``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.cli.status import EMERGENCY_ALERT_TYPES, THROTTLE_ALERT_TYPES, exit_text
from core.config import Settings
from core.database import connect_sync, migrate_sync
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM
from tests.operator_cli import invoke, run_cli

NOW = time.time()


def make_trouble(settings: Settings, *, supervisor_pid: int) -> None:
    """A database and a supervisor state file with something wrong in every part."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect_sync(settings.db_path)
    migrate_sync(conn)
    add_alert(conn, "restart_not_helping", "critical", "2 restarts did not help", NOW - 600)
    add_alert(conn, "memory_high", "high", "memory 850 MB >= 800 MB", NOW - 300)
    add_alert(conn, "cpu_throttle", "high", "CPU 91 % >= 85 %", NOW - 200)
    add_alert(conn, "cpu_spike", "medium", "CPU 70 %", NOW - 100)
    conn.execute(  # resolved: not shown
        "INSERT INTO alerts (alert_type, severity, message, raised_at, resolved_at)"
        " VALUES ('disk_full', 'critical', 'old', ?, ?)",
        (NOW - 900, NOW - 800),
    )
    add_maintenance(conn, "moving the disk")
    for reason, code, sig in [
        ("stop", 0, None),
        ("stop", None, 15),
        ("crash", None, 9),
        ("crash", 1, None),
        ("watchdog", None, 9),
    ]:
        conn.execute(
            "INSERT INTO restarts (at, child, reason, exit_code, signal, uptime_s)"
            " VALUES (?, 'server', ?, ?, ?, 12.0)",
            (NOW - 100, reason, code, sig),
        )
    conn.execute(  # two days old: out of the 24 h counts
        "INSERT INTO restarts (at, child, reason, exit_code) VALUES (?, 'server', 'crash', 1)",
        (NOW - 2 * 86400,),
    )
    conn.execute(
        "INSERT INTO backup_runs (started_at, finished_at, ok, error)"
        " VALUES (?, ?, 0, 'data/backups is not writable')",
        (NOW - 50, NOW - 49),
    )
    conn.close()
    state = {
        "pid": supervisor_pid,
        "children": {
            "server": {
                "state": "running",
                "pid": 4242,
                "restarts_in_window": 2,
                "last_exit": {"code": None, "signal": 9, "at": NOW - 100, "uptime_s": 12},
            },
            "worker": {
                "state": "failed",
                "pid": None,
                "restarts_in_window": 5,
                "last_exit": {"code": 1, "signal": None, "at": NOW - 10},
            },
        },
    }
    (settings.data_dir / "supervisor.json").write_text(json.dumps(state))


def add_alert(conn: Any, kind: str, severity: str, message: str, at: float) -> None:
    conn.execute(
        "INSERT INTO alerts (alert_type, severity, message, recommended_action, raised_at)"
        " VALUES (?, ?, ?, 'look at it', ?)",
        (kind, severity, message, at),
    )


def add_maintenance(conn: Any, reason: str, until: float | None = NOW + 3600) -> None:
    conn.execute(
        "INSERT INTO maintenance (id, reason, started_at, until) VALUES (1, ?, ?, ?)",
        (reason, NOW - 60, until),
    )


def test_status_without_a_server_shows_everything_from_the_database(
    tsettings: Settings,
) -> None:
    make_trouble(tsettings, supervisor_pid=os.getpid())
    result = invoke(tsettings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    alerts = report["alerts"]
    assert alerts["by_severity"] == {"critical": 1, "high": 2, "medium": 1}
    assert [a["alert_type"] for a in alerts["open"]] == [
        "restart_not_helping",
        "cpu_throttle",  # within a severity: newest first
        "memory_high",
        "cpu_spike",
    ]
    governor = report["governor"]
    assert governor["source"] == "database"
    assert governor["emergency_mode"] is True and governor["throttling"] is True
    assert "server not running" in governor["note"]
    assert report["maintenance"]["on"] is True
    assert report["maintenance"]["reason"] == "moving the disk"
    assert report["backup"]["status"] == "failed"
    assert "not writable" in report["backup"]["message"]
    restarts = report["restarts"]
    assert restarts["by_reason_24h"] == {"crash": 2, "watchdog": 1}
    assert restarts["last_24h"] == 3 and restarts["planned_stops_24h"] == 2
    assert [r["exit"] for r in restarts["recent"]][:3] == ["SIGKILL", "exit 1", "SIGKILL"]
    children = report["supervisor"]["children"]
    assert children["server"]["last_exit_text"] == "SIGKILL"
    assert children["worker"]["state"] == "failed"
    assert report["telegram"]["state"] == "not_configured"

    # worst first: every critical before every high before every medium
    ranks = ["critical", "high", "medium", "low"]
    severities = [a["severity"] for a in report["attention"]]
    assert severities == sorted(severities, key=ranks.index)
    whats = [a["what"] for a in report["attention"]]
    assert whats[0] in ("alert restart_not_helping", "child worker")
    for needed in (
        "alert restart_not_helping",
        "alert memory_high",
        "emergency mode",
        "throttling",
        "maintenance",
        "backup",
        "child worker",
        "restarts",
    ):
        assert needed in whats, whats
    assert "alert disk_full" not in whats


@pytest.mark.slow
def test_the_status_screen_leads_with_the_worst_and_names_signals(tsettings: Settings) -> None:
    make_trouble(tsettings, supervisor_pid=os.getpid())  # the test process: alive
    result = run_cli(tsettings, "status")  # a real process, stdout piped
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("Needs attention")
    first_rows = [line for line in lines if line.startswith("│")][:2]
    assert all("CRITICAL" in row for row in first_rows), out
    assert out.index("CRITICAL") < out.index("HIGH") < out.index("MEDIUM")
    assert "restart_not_helping" in out and "2 restarts did not help" in out
    status_rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in lines
        if line.startswith("│") and line.count("│") == 3
    }
    assert status_rows["alerts"] == "1 critical, 2 high, 1 medium open"
    assert status_rows["emergency mode"].startswith("ON (server not running")
    assert status_rows["throttling"].startswith("ON (server not running")
    assert "moving the disk" in status_rows["maintenance"]
    assert status_rows["backup"].startswith("the last backup failed")
    assert status_rows["restarts"] == "3 in 24 h (crash 2, watchdog 1); planned stops 2"
    assert "last exit SIGKILL" in status_rows["server"]  # the child row
    assert "last exit code 1" in status_rows["worker"]
    restarts = [line for line in lines if "│ server │" in line]
    assert sum("SIGKILL" in line for line in restarts) == 2
    assert sum("SIGTERM" in line and "stop (planned)" in line for line in restarts) == 1
    assert not any(line.split("│")[4].strip() == "-" for line in restarts), out
    assert max(len(line) for line in lines) > 80  # piped: not folded at 80 columns


def test_a_quiet_installation_needs_no_attention_but_the_server(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    conn = connect_sync(tsettings.db_path)
    migrate_sync(conn)
    conn.close()
    report = json.loads(invoke(tsettings, "status", "--json").stdout)
    assert [a["what"] for a in report["attention"]] == ["server"]
    assert report["alerts"] == {"open": [], "by_severity": {}}
    assert report["maintenance"] == {"on": False}
    assert report["governor"]["emergency_mode"] is False
    assert report["backup"]["status"] == "never"
    table = invoke(tsettings, "status")
    assert "none open" in table.stdout and "planned stops 0" in table.stdout


@pytest.mark.slow
def test_status_of_a_live_server_in_emergency_mode_throttling_and_maintenance(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        governor_cleanup_mb=1.0,  # below any Python process's RSS: memory_high fires
        governor_high_mb=2.0,
        governor_restart_mb=90000.0,
        governor_hard_restart_mb=90000.0,
        governor_throttle_cpu_percent=0.001,  # any measurable CPU: throttling
        governor_sustain_s=0.0,
        governor_clear_hold_s=60.0,
        governor_sample_interval_s=0.05,
        governor_memory_limit_mb=100000.0,
    )
    server = live_server_factory(settings)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        emergency = server.client.get("/resources/status").json()["emergency"]
        if emergency["emergency_mode"] and emergency["cpu_throttling"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the governor never entered emergency mode and throttling")
    conn = connect_sync(settings.db_path)
    add_alert(conn, "restart_not_helping", "critical", "restarting did not help", time.time())
    add_maintenance(conn, "upgrading the disk")
    conn.close()

    result = invoke(settings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["server"]["state"] == "running"
    governor = report["governor"]
    assert governor["source"] == "server" and governor["note"] is None
    assert governor["emergency_mode"] is True and governor["throttling"] is True
    severity = {a["alert_type"]: a["severity"] for a in report["alerts"]["open"]}
    assert severity["restart_not_helping"] == "critical"
    assert severity["memory_high"] == "high"  # stored by the running governor
    assert report["alerts"]["open"][0]["severity"] == "critical"  # (cpu_critical may be too)
    assert report["maintenance"]["reason"] == "upgrading the disk"
    assert report["attention"][0]["severity"] == "critical"
    whats = [a["what"] for a in report["attention"]]
    assert {
        "alert restart_not_helping",
        "emergency mode",
        "throttling",
        "maintenance",
        "alert memory_high",
    } <= set(whats)
    assert report["telegram"] == {"state": "not_configured", "source": "server"}

    table = invoke(settings, "status")
    assert table.exit_code == 0, table.output
    assert "ON" in table.stdout and "upgrading the disk" in table.stdout


def test_emergency_and_throttle_alert_types_match_the_governors_rules() -> None:
    from monitoring.governor import EMERGENCY_KEYS
    from monitoring.rules import RULES_BY_KEY

    assert {RULES_BY_KEY[key].alert_type for key in EMERGENCY_KEYS} == EMERGENCY_ALERT_TYPES
    assert {RULES_BY_KEY["throttle"].alert_type} == THROTTLE_ALERT_TYPES


@pytest.mark.parametrize(
    ("code", "sig", "shown"),
    [
        (None, 9, "SIGKILL"),
        (-15, None, "SIGTERM"),
        (None, 250, "signal 250"),
        (1, None, "exit 1"),
        (0, None, "exit 0"),
        (None, None, None),
    ],
)
def test_exits_are_named(code: int | None, sig: int | None, shown: str | None) -> None:
    assert exit_text(code, sig) == shown


def test_a_server_that_does_not_answer_is_critical_and_the_governor_is_judged_from_alerts(
    tsettings: Settings, fake_server_process: Any
) -> None:
    make_trouble(tsettings, supervisor_pid=os.getpid())
    tsettings.pid_file.write_text(f"{fake_server_process.pid}\n")  # alive, nothing listens
    report = json.loads(invoke(tsettings, "status", "--json").stdout)
    assert report["server"]["state"] == "not answering"
    server = next(a for a in report["attention"] if a["what"] == "server")
    assert server["severity"] == "critical" and "does not answer" in server["detail"]
    assert report["governor"]["note"].startswith("server not answering")
    assert report["telegram"]["state"] == "not_configured"


def test_the_server_row_names_the_server_not_the_supervisor(
    tsettings: Settings, fake_server_process: Any
) -> None:
    """start.sh's PID file names the supervisor; the server is its child."""
    make_trouble(tsettings, supervisor_pid=os.getpid())
    state_file = tsettings.data_dir / "supervisor.json"
    state = json.loads(state_file.read_text())
    state["children"]["server"]["pid"] = fake_server_process.pid
    state_file.write_text(json.dumps(state))
    tsettings.pid_file.write_text(f"{os.getpid()}\n")
    report = json.loads(invoke(tsettings, "status", "--json").stdout)
    assert report["server"]["pid"] == fake_server_process.pid
    assert report["supervisor"]["pid"] == os.getpid()
    assert report["server"]["state"] == "not answering"  # alive, nothing listens


def test_a_database_not_yet_migrated_says_so_and_shows_the_rest(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    conn = connect_sync(tsettings.db_path)
    migrate_sync(conn, target=3)  # before the maintenance and backup_runs tables
    add_alert(conn, "memory_high", "high", "memory 850 MB", NOW)
    conn.close()
    result = invoke(tsettings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["maintenance"]["on"] is False
    assert "scripts/start.sh migrates it" in report["maintenance"]["error"]
    assert "schema 3 of" in report["backup"]["error"]
    assert report["alerts"]["by_severity"] == {"high": 1}
    assert report["governor"]["emergency_mode"] is True
    assert invoke(tsettings, "status").exit_code == 0


@pytest.mark.parametrize(
    ("until_offset", "on"), [(None, True), (60, True), (-1, False)], ids=["open", "ahead", "ended"]
)
def test_maintenance_is_on_until_its_window_ends(
    tsettings: Settings, until_offset: float | None, on: bool
) -> None:
    until = None if until_offset is None else time.time() + until_offset
    tsettings.data_dir.mkdir(parents=True)
    conn = connect_sync(tsettings.db_path)
    migrate_sync(conn)
    add_maintenance(conn, "disk swap", until=until)
    conn.close()
    report = json.loads(invoke(tsettings, "status", "--json").stdout)
    assert report["maintenance"]["on"] is on
    assert ("maintenance" in [a["what"] for a in report["attention"]]) is on
    table = invoke(tsettings, "status").stdout
    assert ("on since" in table) is on and ("the window ended" in table) is not on
