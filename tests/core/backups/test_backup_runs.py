"""Recording backup attempts: the scheduled job, and a database that cannot take the record."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from core.backups.backup import BackupFailed, InvalidName
from core.backups.runs import record_finish, take_backup
from core.backups.state import read_backup_state
from core.config import Settings
from core.errors import StorageError
from tasks.jobs import backup_and_prune
from tests.conftest import make_settings
from tests.fake_llm import dead_url
from tests.operator_cli import fill, invoke, rows


def test_the_scheduled_job_records_success_and_failure(tsettings: Settings, tmp_path: Path) -> None:
    fill(tsettings.db_path, 10)
    result = backup_and_prune(tsettings)
    assert result["snapshot"].startswith("auto_")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = make_settings(tmp_path, llm_base_url=dead_url(), backup_dir=blocker / "b")
    with pytest.raises(BackupFailed, match="is not writable"):
        backup_and_prune(bad)
    runs = rows(tsettings.db_path, "SELECT ok, trigger, path, size_bytes FROM backup_runs")
    assert [(r[0], r[1]) for r in runs] == [(1, "scheduled"), (0, "scheduled")]
    assert runs[0][2].endswith(".db.gz") and runs[0][3] > 0
    assert tuple(rows(tsettings.db_path, "SELECT name, value FROM counters")[0]) == (
        "vigil_backup_failures",
        1.0,
    )


def test_a_database_that_cannot_take_the_record_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = tmp_path / "missing" / "system.db"
    with caplog.at_level(logging.WARNING, logger="core.backups.runs"):
        recorded = record_finish(
            nowhere, None, trigger="cli", started_at=1.0, ok=False, error="disk gone"
        )
    assert recorded is False
    assert any("could not record the failed backup" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)  # one line, no traceback


def test_a_backup_of_a_missing_database_raises_its_own_error(
    tsettings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(StorageError, match="no database"):
        take_backup(tsettings, trigger="cli")
    assert not tsettings.db_path.exists()  # the record never creates a database
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not record the start of a backup" in m for m in messages)


def test_a_bad_or_taken_name_is_no_failed_backup(tsettings: Settings) -> None:
    fill(tsettings.db_path, 3)
    take_backup(tsettings, trigger="cli", name="once")
    with pytest.raises(BackupFailed, match="already exists"):
        take_backup(tsettings, trigger="cli", name="once")
    with pytest.raises(InvalidName):
        take_backup(tsettings, trigger="cli", name="../etc")
    runs = rows(tsettings.db_path, "SELECT ok FROM backup_runs")
    assert [r[0] for r in runs] == [1]
    assert rows(tsettings.db_path, "SELECT count(*) FROM counters")[0][0] == 0


def test_a_restore_keeps_the_backup_history_the_snapshot_never_saw(tsettings: Settings) -> None:
    # A snapshot is copied before its own backup_runs row is finished: restoring it
    # left "no backup has been taken yet" (no stale alert, no last-success metric).
    fill(tsettings.db_path, 10)
    taken = invoke(tsettings, "backup", "--name", "before")
    assert taken.exit_code == 0, taken.output
    later = invoke(tsettings, "backup", "--name", "later")
    assert later.exit_code == 0, later.output

    restored = invoke(tsettings, "restore", "before", "--confirm")

    assert restored.exit_code == 0, restored.output
    runs = rows(tsettings.db_path, "SELECT ok, path FROM backup_runs ORDER BY id")
    assert [(r[0], Path(r[1] or "-").name) for r in runs] == [
        (1, "before.db.gz"),
        (1, "later.db.gz"),
    ]
    conn = sqlite3.connect(tsettings.db_path)
    try:
        state = read_backup_state(conn, tsettings, time.time())
    finally:
        conn.close()
    assert state.status == "ok" and state.last_success_path is not None
    assert state.last_success_path.endswith("later.db.gz")


def test_a_restore_says_which_deletions_it_undid_and_keeps_their_record(
    tsettings: Settings,
) -> None:
    # A snapshot taken before `delete --chat` holds the chat: restoring it brought the
    # data back silently and dropped the deletion's record.
    fill(tsettings.db_path, 12)
    assert invoke(tsettings, "backup", "--name", "before").exit_code == 0
    deleted = invoke(tsettings, "delete", "--chat", "c1", "--confirm")
    assert deleted.exit_code == 0, deleted.output

    restored = invoke(tsettings, "restore", "before", "--confirm")

    assert restored.exit_code == 0, restored.output
    told = [line for line in restored.output.splitlines() if "predates the deletion" in line]
    assert told == [
        "the snapshot predates the deletion of chat local:c1: its data is back; "
        "delete it again: scripts/vigilctl delete --chat local:c1 --confirm"
    ]
    records = rows(tsettings.db_path, "SELECT scope, target, messages FROM deletions")
    assert [tuple(r) for r in records] == [("chat", "local:c1", 4)]
    again = invoke(tsettings, "delete", "--chat", "local:c1", "--confirm")
    assert again.exit_code == 0, again.output


def test_a_restore_keeps_the_restart_history_newer_than_the_snapshot(tsettings: Settings) -> None:
    # The stop.sh right before a restore vanished from `status` ("planned stops").
    fill(tsettings.db_path, 6)
    assert invoke(tsettings, "backup", "--name", "before").exit_code == 0
    conn = sqlite3.connect(tsettings.db_path)
    conn.execute(
        "INSERT INTO restarts (at, child, reason, exit_code, detail) VALUES (?, ?, ?, ?, ?)",
        (time.time(), "server", "stop", 0, "SIGTERM; drained in 0.0 s"),
    )
    conn.commit()
    conn.close()

    restored = invoke(tsettings, "restore", "before", "--confirm")

    assert restored.exit_code == 0, restored.output
    history = rows(tsettings.db_path, "SELECT child, reason, exit_code FROM restarts")
    assert [tuple(r) for r in history] == [("server", "stop", 0)]
