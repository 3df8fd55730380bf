"""validate: corruption, a desynchronised search index, orphans, permissions."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from core.backups.backup import create_backup
from core.backups.integrity import check_latest_backup, private_paths, repair_fts, validate_database
from core.config import Settings
from tests.operator_cli import fill


def _statuses(checks: list) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def _checkpointed_copy(src: Path, dst: Path) -> Path:
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copyfile(src, dst)
    return dst


def test_a_healthy_database_passes_every_check(filled: Settings) -> None:
    perms = private_paths(filled.data_dir, filled.db_path, filled.logs_dir)
    checks = validate_database(filled.db_path, permissions=perms)
    assert _statuses(checks) == {
        "integrity": "ok",
        "schema": "ok",
        "fts": "ok",
        "orphans": "ok",
        "fts_content": "ok",
        "permissions": "ok",
    }


def test_a_deliberately_corrupted_copy_fails(filled: Settings, tmp_path: Path) -> None:
    fill(filled.db_path, 3000, start=2e9)  # enough pages that the middle is table data
    copy = _checkpointed_copy(filled.db_path, tmp_path / "copy.db")
    data = bytearray(copy.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle + 8 : middle + page] = os.urandom(page - 8)  # keep the header, smash the cells
    copy.write_bytes(bytes(data))
    checks = validate_database(copy)
    assert not all(c.is_ok for c in checks)
    assert any(c.status == "fail" for c in checks if c.name in ("integrity", "tables"))


def test_not_a_database_at_all_fails(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 500)
    checks = validate_database(junk)
    assert checks[0].status == "fail"
    assert validate_database(tmp_path / "missing.db")[0].detail.startswith("no database file")


def test_a_desynchronised_search_index_is_detected_and_repaired(filled: Settings) -> None:
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    row = conn.execute("SELECT id, content FROM messages WHERE id = 7").fetchone()
    # Drop one message from the index behind the triggers' back.
    conn.execute(
        "INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', ?, ?)", row
    )
    conn.close()
    checks = validate_database(filled.db_path)
    assert _statuses(checks)["fts"] == "fail"
    assert "1 message(s) not indexed" in next(c.detail for c in checks if c.name == "fts")

    repair_fts(filled.db_path)
    assert all(c.is_ok for c in validate_database(filled.db_path))


def test_stale_content_in_the_index_needs_the_full_check(filled: Settings) -> None:
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    conn.execute("DROP TRIGGER messages_fts_update")  # an update the index never sees
    conn.execute("UPDATE messages SET content = 'zebra crossing' WHERE id = 3")
    conn.close()
    quick = validate_database(filled.db_path, full_fts=False)
    assert all(c.is_ok for c in quick)  # same rows indexed: the row-level check passes
    full = validate_database(filled.db_path, full_fts=True)
    assert _statuses(full)["fts_content"] == "fail"


def test_orphans_and_loose_permissions_fail(filled: Settings) -> None:
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("DELETE FROM chats WHERE id = 'local:c1'")
    conn.close()
    os.chmod(filled.db_path, 0o644)
    perms = private_paths(filled.data_dir, filled.db_path, filled.logs_dir)
    statuses = _statuses(validate_database(filled.db_path, permissions=perms))
    assert statuses["orphans"] == "fail"
    assert statuses["permissions"] == "fail"


def test_the_latest_backup_is_checked(filled: Settings) -> None:
    now = time.time()
    assert check_latest_backup(filled.backups_dir, now=now).status == "warn"  # none yet
    create_backup(filled.db_path, filled.backups_dir, name="old", now=now - 3 * 86400)
    old = check_latest_backup(filled.backups_dir, now=now)
    assert old.status == "warn" and "72 h old" in old.detail
    snap = create_backup(filled.db_path, filled.backups_dir, name="new", now=now - 60)
    assert check_latest_backup(filled.backups_dir, now=now).status == "ok"
    snap.path.write_bytes(snap.path.read_bytes()[:100])
    damaged = check_latest_backup(filled.backups_dir, now=now)
    assert damaged.status == "fail" and "new" in damaged.detail
