"""Upgrades: a verified snapshot before every schema migration, and rollback from it.

A database made by an older Vigil (schema 3, built from the first three
migrations, with data) goes through the real pre-flight: the snapshot is
taken before the migration, verified, kept, and restoring it gives back the
schema-3 database with its data. A snapshot that cannot be taken blocks the
migration unless the operator says otherwise.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.backups.backup import list_snapshots, verify_snapshot
from core.backups.restore import restore_live, restore_to_file
from core.config import Settings
from core.preflight import (
    SKIP_SNAPSHOT_ENV,
    PreflightError,
    Report,
    pre_migration_snapshot,
    run_preflight,
)
from core.process import SUPERVISOR_LOCK_NAME
from core.schema import MIGRATIONS, SCHEMA_VERSION
from tests.fake_llm import free_port

OLD = 3


def _settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", port=free_port())  # type: ignore[call-arg]


def make_old_database(path: Path, version: int = OLD) -> None:
    """A database exactly as Vigil at schema ``version`` left it, with two chats of data."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    for i in range(10):
        conn.execute(
            "INSERT INTO messages (chat_id, role, content, created_at) VALUES (?, 'user', ?, ?)",
            (f"local:chat{i % 2}", f"message {i}", 1000.0 + i),
        )
    conn.close()


def _content(path: Path) -> tuple[int, list[tuple[str, str]]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute("SELECT chat_id, content FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()
    return version, rows


def test_a_migration_is_preceded_by_a_verified_snapshot_that_restores_the_old_schema(
    tmp_path: Path,
) -> None:
    assert OLD < SCHEMA_VERSION
    settings = _settings(tmp_path)
    make_old_database(settings.db_path)
    old_version, old_rows = _content(settings.db_path)
    assert old_version == OLD and len(old_rows) == 10

    report = run_preflight(settings, environ={})

    text = "\n".join(report.lines)
    [snapshot] = list_snapshots(settings.backups_dir)
    assert snapshot.name.startswith(f"pre-migration-v{OLD}-")
    assert snapshot.schema_version == OLD and snapshot.messages == 10
    verify_snapshot(snapshot)  # checksum and gzip read back
    assert f"snapshot {snapshot.name} taken and verified before migrating schema {OLD}" in text
    assert f"scripts/vigilctl restore {snapshot.name} --confirm" in text
    assert f"migrated schema {OLD} -> {SCHEMA_VERSION}" in text
    # The data survived the migration.
    assert _content(settings.db_path) == (SCHEMA_VERSION, old_rows)
    # Rollback: the snapshot is the old database, schema and data.
    restored = tmp_path / "restored.db"
    restore_to_file(snapshot, restored)
    assert _content(restored) == (OLD, old_rows)
    # ... and so is the live database after the documented restore (server stopped).
    result = restore_live(
        snapshot,
        settings.db_path,
        confirm=True,
        supervisor_lock=settings.data_dir / SUPERVISOR_LOCK_NAME,
    )
    assert _content(settings.db_path) == (OLD, old_rows)
    assert result.kept_aside and _content(result.kept_aside[0])[0] == SCHEMA_VERSION


def test_no_snapshot_when_nothing_is_migrated(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    run_preflight(settings, environ={})  # a new install: created, nothing to keep
    report = run_preflight(settings, environ={})  # current schema: nothing to migrate
    assert list_snapshots(settings.backups_dir) == []
    assert f"database: schema version {SCHEMA_VERSION}" in report.lines


def test_a_failed_snapshot_blocks_the_migration_unless_overridden(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_old_database(settings.db_path)
    settings.backups_dir.write_text("not a directory")  # the snapshot cannot be written

    with pytest.raises(PreflightError) as info:
        run_preflight(settings, environ={})

    message = str(info.value)
    assert "\n" not in message
    assert f"the snapshot before migrating schema {OLD} -> {SCHEMA_VERSION} failed" in message
    assert "the database was not migrated" in message and SKIP_SNAPSHOT_ENV in message
    assert _content(settings.db_path)[0] == OLD  # untouched

    report = run_preflight(settings, environ={SKIP_SNAPSHOT_ENV: "1"})
    assert f"no snapshot before migrating schema {OLD} -> {SCHEMA_VERSION}" in "\n".join(
        report.lines
    )
    assert _content(settings.db_path)[0] == SCHEMA_VERSION


def test_a_bad_override_value_is_one_line(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(PreflightError, match=f"{SKIP_SNAPSHOT_ENV}='maybe' is not valid"):
        run_preflight(settings, environ={SKIP_SNAPSHOT_ENV: "maybe"})


def test_a_newer_database_refuses_older_code_naming_vigilctl(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_old_database(settings.db_path, SCHEMA_VERSION)
    conn = sqlite3.connect(settings.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(PreflightError) as info:
        run_preflight(settings, environ={})
    assert "newer than this Vigil" in str(info.value)
    assert "scripts/vigilctl restore <name> --confirm" in str(info.value)
    assert list_snapshots(settings.backups_dir) == []


def test_the_snapshot_is_recorded_where_the_schema_has_backup_runs(tmp_path: Path) -> None:
    """With backup runs recorded (core.backups.runs), the snapshot is a pre-migration run.

    (The next migration's case: today's schema already has the table.)
    """
    pytest.importorskip("core.backups.runs")
    settings = _settings(tmp_path)
    make_old_database(settings.db_path, SCHEMA_VERSION)
    report = Report()

    pre_migration_snapshot(settings, SCHEMA_VERSION, report)

    [snapshot] = list_snapshots(settings.backups_dir)
    conn = sqlite3.connect(settings.db_path)
    rows = conn.execute("SELECT trigger, ok FROM backup_runs").fetchall()
    conn.close()
    assert rows == [("pre-migration", 1)] and snapshot.kind == "pre-migration"
    assert any(snapshot.name in line for line in report.lines)
