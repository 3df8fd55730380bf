"""The preparation shared by start.sh and systemd (scripts/prepare.sh), for real.

The command lines are read from deploy/vigil.service itself, with /opt/vigil
replaced by a temporary copy of the checkout, and run as systemd would run
them: so the unit names a command that exists and works. Upgrading a
schema-3 database through start.sh takes the pre-migration snapshot and says
how to roll back; a snapshot that cannot be taken stops the start.
"""

from __future__ import annotations

import configparser
import getpass
import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from core.backups.backup import list_snapshots, verify_snapshot
from core.schema import SCHEMA_VERSION
from tests.core.test_upgrade import OLD, make_old_database
from tests.processes import ROOT
from tests.scripts import test_start_stop as start_stop
from tests.scripts.test_start_stop import run

pytestmark = pytest.mark.slow

# The copy of the checkout and its environment (fixtures of test_start_stop.py).
install = start_stop.install
env = start_stop.env


def unit_for(install: Path) -> configparser.ConfigParser:
    """deploy/vigil.service with /opt/vigil pointing at ``install``."""
    text = (ROOT / "deploy" / "vigil.service").read_text().replace("/opt/vigil", str(install))
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def _version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_the_units_exec_start_pre_prepares_and_snapshots_before_migrating(
    install: Path, env: dict[str, str]
) -> None:
    service = unit_for(install)["Service"]
    command = shlex.split(service["ExecStartPre"])
    assert command[1] == str(install / "scripts" / "prepare.sh")
    db = install / "data" / "system.db"
    make_old_database(db)

    def exec_start_pre() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=service["WorkingDirectory"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = exec_start_pre()

    assert done.returncode == 0, done.stdout + done.stderr
    [snapshot] = list_snapshots(install / "data" / "backups")
    verify_snapshot(snapshot)
    assert snapshot.schema_version == OLD
    assert f"snapshot {snapshot.name} taken and verified" in done.stdout
    assert f"scripts/vigilctl restore {snapshot.name} --confirm" in done.stdout
    assert _version(db) == SCHEMA_VERSION

    again = exec_start_pre()  # nothing left to migrate: no second snapshot
    assert again.returncode == 0, again.stderr
    assert len(list_snapshots(install / "data" / "backups")) == 1

    # The unit file itself passes systemd's checks (its programs exist once .venv does).
    analyze = shutil.which("systemd-analyze")
    if analyze:
        (install / ".venv").symlink_to(env["VIGIL_VENV"])
        user = getpass.getuser()
        text = (ROOT / "deploy" / "vigil.service").read_text().replace("/opt/vigil", str(install))
        text = text.replace("User=vigil", f"User={user}").replace("Group=vigil", "")
        target = install / "unit" / "vigil.service"
        target.parent.mkdir(exist_ok=True)
        target.write_text(text)
        try:
            checked = subprocess.run(
                [analyze, "verify", str(target)], capture_output=True, text=True, timeout=60
            )
        finally:
            (install / ".venv").unlink()
        assert checked.returncode == 0, checked.stderr


def test_start_sh_snapshots_before_the_migration_and_prints_the_rollback(
    install: Path, env: dict[str, str]
) -> None:
    db = install / "data" / "system.db"
    make_old_database(db)

    started = run(install, env, "start.sh")

    assert started.returncode == 0, started.stdout + started.stderr
    snapshots = list_snapshots(install / "data" / "backups")  # the hourly one may be there too
    [snapshot] = [s for s in snapshots if s.name.startswith(f"pre-migration-v{OLD}-")]
    lines = started.stdout.splitlines()
    snap_line = next(i for i, line in enumerate(lines) if "taken and verified" in line)
    migrated = next(i for i, line in enumerate(lines) if "migrated schema" in line)
    assert snap_line < migrated  # the snapshot came first
    assert f"scripts/vigilctl restore {snapshot.name} --confirm" in started.stdout
    assert run(install, env, "stop.sh").returncode == 0


def test_start_sh_stops_when_the_snapshot_fails(install: Path, env: dict[str, str]) -> None:
    db = install / "data" / "system.db"
    make_old_database(db)
    (install / "data" / "backups").write_text("not a directory")
    try:
        started = run(install, env, "start.sh")
        assert started.returncode != 0
        errors = [line for line in started.stderr.splitlines() if "snapshot before" in line]
        assert len(errors) == 1 and "VIGIL_MIGRATE_WITHOUT_SNAPSHOT=1" in errors[0]
        assert _version(db) == OLD and not (install / "data" / "vigil.pid").exists()

        forced = run(install, {**env, "VIGIL_MIGRATE_WITHOUT_SNAPSHOT": "1"}, "start.sh")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "no snapshot before migrating" in forced.stdout
        assert _version(db) == SCHEMA_VERSION
    finally:
        run(install, env, "stop.sh")
        os.unlink(install / "data" / "backups")
