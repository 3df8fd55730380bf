"""Task bodies against real services: the fake model, a live server."""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.backups.backup import create_backup, list_snapshots
from core.config import Settings
from core.database import connect_sync
from tasks import jobs
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM, dead_url
from tests.operator_cli import fill, rows


def _overflow(settings: Settings, chat_id: str) -> None:
    conn = connect_sync(settings.db_path)
    conn.execute(
        "UPDATE chats SET summary = '- user: apples\n- assistant: pears', summary_upto_id = 10,"
        " updated_at = ? WHERE id = ?",
        (time.time(), chat_id),
    )
    conn.close()


def test_refine_summaries_uses_the_model(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.reply = "They talked about fruit."
    fill(settings.db_path, 60)
    _overflow(settings, "local:c1")
    result = jobs.refine_summaries(settings)
    assert result == {"refined": 1, "failed": 0, "candidates": 1}
    summary = rows(settings.db_path, "SELECT summary FROM chats WHERE id = 'local:c1'")[0][0]
    assert summary == "They talked about fruit."
    assert jobs.refine_summaries(settings) == {"refined": 0, "candidates": 0}  # no longer '- '


def test_refine_summaries_skips_when_the_model_is_down(tsettings: Settings) -> None:
    fill(tsettings.db_path, 60)
    _overflow(tsettings, "local:c2")
    result = jobs.refine_summaries(tsettings)
    assert result["candidates"] == 1 and result["skipped"].startswith("model unreachable")


def test_message_retention_is_off_by_default(filled: Settings) -> None:
    assert "skipped" in jobs.message_retention(filled)
    assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == 300


def test_the_backup_task_applies_retention_and_sweeps_leftovers(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        llm_base_url=dead_url(),
        backup_keep_hourly=2,
        backup_keep_daily=0,
        backup_keep_weekly=0,
        backup_keep_monthly=0,
    )
    fill(settings.db_path, 30)
    for hour in (1, 2, 3):
        create_backup(
            settings.db_path,
            settings.backups_dir,
            kind="auto",
            name=f"old-{hour}",
            now=1_700_000_000 + hour * 3600,
        )
    create_backup(settings.db_path, settings.backups_dir, name="mine", now=1_600_000_000)
    leftover = settings.backups_dir / ".killed.db.tmp"
    leftover.write_bytes(b"half a copy")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))

    result = jobs.backup_and_prune(settings)
    assert result["messages"] == 30
    assert sorted(result["pruned"]) == ["old-1", "old-2"]
    names = {s.name for s in list_snapshots(settings.backups_dir)}
    assert names == {result["snapshot"], "old-3", "mine"}
    assert not leftover.exists()


def test_the_daily_cleanup_job_also_trims_alerts_and_restarts(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    long_ago = time.time() - 100 * 86400
    conn.execute(
        "INSERT INTO alerts (alert_type, severity, message, raised_at, resolved_at)"
        " VALUES ('memory', 'high', 'x', ?, ?)",
        (long_ago, long_ago + 60),
    )
    conn.execute(
        "INSERT INTO restarts (at, child, reason) VALUES (?, 'server', 'crash')", (long_ago,)
    )
    conn.close()
    result = jobs.cleanup_old_tasks(filled)
    assert (result["alerts_deleted"], result["restarts_deleted"]) == (1, 1)
    assert rows(filled.db_path, "SELECT count(*) FROM alerts")[0][0] == 0
    assert rows(filled.db_path, "SELECT count(*) FROM restarts")[0][0] == 0
