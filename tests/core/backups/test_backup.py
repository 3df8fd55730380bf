"""Backups under a live writer, verification, and restore (file and live)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.backups.backup import (
    BackupFailed,
    InvalidName,
    SnapshotDamaged,
    create_backup,
    find_snapshot,
    list_snapshots,
    verify_snapshot,
)
from core.backups.integrity import check_fts_full, integrity_problems
from core.backups.restore import ConfirmRequired, restore_live, restore_to_file
from core.config import Settings
from core.restarts import SUPERVISOR_LOCK
from tests.operator_cli import fill, rows

WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
i = 0
while True:
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, created_at) VALUES (?, 'user', ?, ?)",
        ("local:w", f"written while backing up {i}", time.time()),
    )
    i += 1
"""


def _max_id(db: Path) -> int:
    return int(rows(db, "SELECT coalesce(max(id), 0) FROM messages")[0][0])


@pytest.mark.slow
def test_backup_during_continuous_writes_restores_every_committed_row(
    tsettings: Settings, tmp_path: Path
) -> None:
    db = tsettings.db_path
    fill(db, 20_000)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)])
    try:
        deadline = time.monotonic() + 20
        while _max_id(db) < 20_200 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _max_id(db)  # every row up to here committed before the backup began
        snap = create_backup(db, tsettings.backups_dir, name="under-load")
        during = _max_id(db)
        assert writer.poll() is None, "the writer died"
    finally:
        writer.terminate()
        writer.wait(timeout=10)
    assert before > 20_000 and during > before  # the writer really ran alongside

    target = tmp_path / "restored.db"
    result = restore_to_file(snap, target)
    assert integrity_problems(target) == []
    assert check_fts_full(target).status == "ok"
    restored_max = _max_id(target)
    assert before <= restored_max <= during
    # ids are contiguous (autoincrement, no deletes): all rows up to `before` are there.
    assert rows(target, "SELECT count(*) FROM messages WHERE id <= ?", (before,))[0][0] == before
    assert result.messages == snap.messages == restored_max
    assert rows(target, "PRAGMA journal_mode")[0][0] == "delete"  # a plain file


def test_snapshot_files_are_private_checksummed_and_listed(filled: Settings) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="one")
    assert snap.path.stat().st_mode & 0o077 == 0
    assert snap.manifest_path.stat().st_mode & 0o077 == 0
    assert filled.backups_dir.stat().st_mode & 0o077 == 0
    assert snap.size_bytes < snap.db_bytes  # compressed
    assert [s.name for s in list_snapshots(filled.backups_dir)] == ["one"]
    assert find_snapshot(filled.backups_dir, "one.db.gz") == snap
    dot_files = [p for p in filled.backups_dir.iterdir() if p.name.startswith(".")]
    assert [p.name for p in dot_files] == [".backup.lock"]  # no temp file left
    assert dot_files[0].stat().st_mode & 0o077 == 0
    with pytest.raises(BackupFailed, match="already exists"):
        create_backup(filled.db_path, filled.backups_dir, name="one")
    with pytest.raises(InvalidName):
        create_backup(filled.db_path, filled.backups_dir, name="../escape")


def test_a_damaged_snapshot_is_refused_and_nothing_is_written(
    filled: Settings, tmp_path: Path
) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="bad")
    data = bytearray(snap.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.path.write_bytes(bytes(data))
    with pytest.raises(SnapshotDamaged, match="checksum"):
        verify_snapshot(snap)
    target = tmp_path / "never.db"
    with pytest.raises(SnapshotDamaged):
        restore_to_file(snap, target)
    assert not target.exists()
    assert not list(tmp_path.glob(".never.db*"))


@pytest.mark.slow
def test_restore_live_needs_confirmation_and_keeps_the_database_aside(
    filled: Settings, fake_server_process: subprocess.Popen[bytes]
) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="base")
    fill(filled.db_path, 50, chats=1, start=2e9)  # changes after the snapshot
    after = _max_id(filled.db_path)
    # A PID file naming a live process that only looks like Vigil (a recycled
    # pid) does not count as a running server: nothing holds the lock or the file.
    filled.pid_file.write_text(f"{fake_server_process.pid}\n")
    lock = filled.data_dir / SUPERVISOR_LOCK

    with pytest.raises(ConfirmRequired, match="--confirm"):
        restore_live(snap, filled.db_path, supervisor_lock=lock, confirm=False)
    assert _max_id(filled.db_path) == after  # untouched

    result = restore_live(snap, filled.db_path, supervisor_lock=lock, confirm=True)
    assert _max_id(filled.db_path) == 300
    assert result.kept_aside and result.kept_aside[0].name.startswith("system.db.before-restore-")
    assert _max_id(result.kept_aside[0]) == after  # the previous database, kept whole


def test_backup_of_a_missing_database_fails_clearly(tsettings: Settings) -> None:
    with pytest.raises(Exception, match="no database"):
        create_backup(tsettings.db_path, tsettings.backups_dir)


@pytest.mark.parametrize("phase", ["copy", "check", "compress", "verify"])
def test_an_interrupted_backup_leaves_nothing_behind(filled: Settings, phase: str) -> None:
    def interrupt(current: str, done: int, total: int) -> None:
        if current == phase:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_backup(filled.db_path, filled.backups_dir, name="cut", progress=interrupt)
    assert [p.name for p in filled.backups_dir.iterdir()] == [".backup.lock"]
    assert list_snapshots(filled.backups_dir) == []


def test_two_restores_in_one_second_keep_both_previous_files(filled: Settings) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="base")
    first = restore_live(snap, filled.db_path, confirm=True, now=1e9)
    second = restore_live(snap, filled.db_path, confirm=True, now=1e9)
    assert first.kept_aside[0] != second.kept_aside[0]
    assert first.kept_aside[0].exists() and second.kept_aside[0].exists()
