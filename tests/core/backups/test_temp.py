"""Temp files of interrupted backups: named, reported by validate, swept by the next run.

A backup killed with kill -9 used to leave full-size ``.NAME.db.tmp`` /
``.NAME.gz.tmp`` files that were swept only after an hour, while ``validate``
said all was well. The first test kills a real ``python main.py backup``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.backups.backup import BackupFailed, create_backup, list_snapshots, verify_snapshot
from core.backups.temp import (
    backup_running,
    find_leftovers,
    owner_of,
    sweep_leftovers,
    temp_files,
    temp_path,
)
from core.config import Settings
from tasks import jobs
from tests.operator_cli import MAIN, cli_env, run_cli
from tests.processes import wait_for

PAD_MB = 96  # random bytes: slow to compress, so the backup is caught in the act


def _pad(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pad (b BLOB)")
        conn.executemany("INSERT INTO pad VALUES (randomblob(1 << 20))", [()] * PAD_MB)
    conn.close()


def _kill_mid_backup(settings: Settings, name: str) -> list[Path]:
    """Start ``main.py backup``, SIGKILL it once both temp files exist; returns them."""
    proc = subprocess.Popen(
        [sys.executable, str(MAIN), "backup", "--name", name],
        env=cli_env(settings),
        cwd=settings.data_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    packed = temp_path(settings.backups_dir, name, ".db.gz", pid=proc.pid)
    try:
        wait_for(
            lambda: packed.exists() or proc.poll() is not None,
            60,
            "the backup to start compressing",
            interval=0.002,
        )
        assert proc.poll() is None, "the backup finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return temp_files(settings.backups_dir)


@pytest.mark.slow
def test_a_killed_backup_is_reported_then_swept_by_the_next_backup_and_cleanup(
    filled: Settings,
) -> None:
    _pad(filled.db_path)
    left = _kill_mid_backup(filled, "killed")
    assert {p.name.split(".", 3)[3] for p in left} == {"killed.db", "killed.db.gz"}
    assert {owner_of(p) for p in left} != {None}
    size = sum(p.stat().st_size for p in left)
    assert size > PAD_MB * 1e6  # the full copy, at least
    assert list_snapshots(filled.backups_dir) == []

    report = json.loads(run_cli(filled, "validate", "--json").stdout)
    check = {c["name"]: c for c in report["checks"]}["backup_temp"]
    assert check["status"] == "warn"
    assert "2 temp file(s) of interrupted backups" in check["detail"]
    assert f"{size / 1e6:.1f} MB" in check["detail"]

    result = run_cli(filled, "backup", "--name", "next")
    assert result.returncode == 0, result.stderr
    assert temp_files(filled.backups_dir) == []
    verify_snapshot(list_snapshots(filled.backups_dir)[0])
    report = json.loads(run_cli(filled, "validate", "--json").stdout)
    assert {c["name"]: c["status"] for c in report["checks"]}["backup_temp"] == "ok"

    left = _kill_mid_backup(filled, "again")
    size = sum(p.stat().st_size for p in left)
    dry = json.loads(run_cli(filled, "cleanup", "--dry-run", "--json").stdout)
    assert sorted(dry["backup_temp_removed"]) == sorted(p.name for p in left)
    assert temp_files(filled.backups_dir) == left  # a dry run removes nothing
    cleaned = run_cli(filled, "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed 2 temp file(s) of interrupted backups ({size / 2**20:.1f} MB)" in (
        cleaned.stdout
    )
    assert temp_files(filled.backups_dir) == []


@pytest.mark.slow
def test_only_the_files_of_a_backup_that_is_gone_are_swept(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    mine = temp_path(backups, "running", ".db")
    dead = temp_path(backups, "killed", ".db", pid=gone.pid)
    legacy = backups / ".older-vigil.db.tmp"
    for path in (mine, dead, legacy):
        path.write_bytes(b"x" * 1000)

    with backup_running(backups):  # a backup runs: only a dead owner's files are stale
        assert find_leftovers(backups).paths == [dead]
        swept = sweep_leftovers(backups)
        assert (swept.paths, swept.size_bytes) == ([dead], 1000)
        assert mine.exists() and legacy.exists()

    found = find_leftovers(backups)  # no backup runs: whatever is left is stale
    assert (sorted(found.paths), found.size_bytes) == (sorted([mine, legacy]), 2000)
    assert sorted(sweep_leftovers(backups).paths) == sorted([mine, legacy])
    assert temp_files(backups) == []


def test_a_failed_backup_removes_its_own_temp_files(filled: Settings) -> None:
    conn = sqlite3.connect(filled.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with filled.db_path.open("r+b") as handle:  # a damaged page: the copy fails its check
        handle.seek(4096 * 3)
        handle.write(b"\xa5" * 4096 * 2)
    with pytest.raises(BackupFailed, match=r"integrity|malformed"):
        create_backup(filled.db_path, filled.backups_dir, name="damaged")
    assert temp_files(filled.backups_dir) == []
    assert [s.name for s in list_snapshots(filled.backups_dir)] == []


@pytest.mark.slow
def test_the_daily_cleanup_task_sweeps_them_too(filled: Settings) -> None:
    filled.backups_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    dead = temp_path(filled.backups_dir, "worker-killed", ".db", pid=gone.pid)
    dead.write_bytes(b"x" * 4096)
    result = jobs.cleanup_old_tasks(filled)
    assert (result["backup_temp_removed"], result["backup_temp_bytes"]) == (1, 4096)
    assert not dead.exists()
