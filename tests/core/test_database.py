"""Database: migrations, pragmas, file modes, the single write path."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from core.database import Database, NewerSchema, connect_sync, migrate_sync
from core.errors import StorageError
from core.schema import MIGRATIONS, SCHEMA_VERSION


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
    return {r[0] for r in rows}


def test_migrates_from_empty(tmp_path: Path) -> None:
    conn = connect_sync(tmp_path / "system.db")
    assert migrate_sync(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"chats", "messages", "messages_fts", "server_tasks", "restarts", "alerts"} <= tables(
        conn
    )
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_migrates_from_previous_version_keeping_data(tmp_path: Path) -> None:
    conn = connect_sync(tmp_path / "system.db")
    migrate_sync(conn, target=SCHEMA_VERSION - 1)
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
        " VALUES ('local:old', 'user', 'from the old schema', 4, 1.0)"
    )
    assert migrate_sync(conn) == SCHEMA_VERSION
    row = conn.execute("SELECT content FROM messages WHERE chat_id = 'local:old'").fetchone()
    assert row[0] == "from the old schema"
    hits = conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'schema'")
    assert len(hits.fetchall()) == 1


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    conn = connect_sync(tmp_path / "system.db")
    migrate_sync(conn)
    before = tables(conn)
    assert migrate_sync(conn) == SCHEMA_VERSION
    assert tables(conn) == before
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = connect_sync(tmp_path / "system.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NewerSchema, match="newer than this Vigil"):
        migrate_sync(conn)


async def test_files_are_private(tmp_path: Path) -> None:
    db = Database(tmp_path / "data" / "system.db")
    await db.open()
    await db.write(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
        " VALUES ('local:a', 'user', 'x', 1, 1.0)"
    )
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
        for name in os.listdir(tmp_path / "data"):
            assert stat.S_IMODE(os.stat(tmp_path / "data" / name).st_mode) == 0o600, name
    finally:
        await db.close()


async def test_write_is_committed_and_visible_to_other_connections(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    try:
        rowid = await db.write(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES ('local:a', 'user', 'durable', 1, 1.0)"
        )
        other = sqlite3.connect(tmp_path / "system.db")
        assert other.execute("SELECT content FROM messages WHERE id = ?", (rowid,)).fetchone() == (
            "durable",
        )
        other.close()
    finally:
        await db.close()


async def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    try:
        with pytest.raises(StorageError):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
                    " VALUES ('local:a', 'user', 'lost', 1, 1.0)"
                )
                await conn.execute("INSERT INTO messages (role) VALUES ('nobody')")
        assert await db.scalar("SELECT count(*) FROM messages") == 0
        await db.write(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES ('local:a', 'user', 'kept', 1, 1.0)"
        )
        assert await db.scalar("SELECT count(*) FROM messages") == 1
    finally:
        await db.close()


async def test_write_waits_for_another_process_lock_without_failing(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    holder = sqlite3.connect(tmp_path / "system.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process (worker, CLI) holds the write lock
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.execute, "COMMIT")
    try:
        await db.write(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES ('local:a', 'user', 'after the lock', 1, 1.0)"
        )
        assert db.slow_writes == 1
        assert await db.scalar("SELECT count(*) FROM messages") == 1
    finally:
        holder.close()
        await db.close()


async def test_closed_database_raises_storage_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    with pytest.raises(StorageError, match="not open"):
        await db.write("SELECT 1")


async def write_rows(db: Database, count: int, *, yields: bool) -> None:
    for i in range(count):
        await db.write(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES ('local:w', 'user', ?, 1, 1.0)",
            (f"message number {i} " * 20,),
        )
        if yields:
            await asyncio.sleep(0)


async def test_checkpoints_run_off_the_loop_and_keep_the_wal_bounded(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    wal = tmp_path / "system.db-wal"

    try:
        assert db.pragma("wal_autocheckpoint") == 0  # never inline in a commit
        # a server yields between writes (network I/O)
        await write_rows(db, 1000, yields=True)
        after_1000 = wal.stat().st_size
        await write_rows(db, 2000, yields=True)
        # Without checkpoints the WAL holds every write (3x); with them it is
        # reused from the start and stays at its high-water mark.
        assert wal.stat().st_size < 1.5 * after_1000
        assert db.checkpoints >= 10
        assert await db.scalar("SELECT count(*) FROM messages") == 3000
    finally:
        await db.close()


async def test_quick_reads_do_not_wait_behind_a_blocked_write(tmp_path: Path) -> None:
    # Found in review: read_now shared the writer; while a write waited 5 s for
    # another process's lock on the db thread, a window rebuild froze the loop.
    db = Database(tmp_path / "system.db")
    await db.open()
    holder = sqlite3.connect(tmp_path / "system.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, holder.execute, "COMMIT")
    try:
        write = asyncio.ensure_future(
            db.write(
                "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
                " VALUES ('local:a', 'user', 'x', 1, 1.0)"
            )
        )
        await asyncio.sleep(0.2)  # the write now waits on the db thread
        started = loop.time()
        assert db.read_now("SELECT count(*) FROM chats")[0][0] == 0
        assert loop.time() - started < 0.5
        await write
    finally:
        holder.close()
        await db.close()


async def test_read_only_uri_paths_with_hash_and_question_mark(tmp_path: Path) -> None:
    odd = tmp_path / "hash#dir?q=1" / "system.db"
    migrate_sync(connect_sync(odd))
    conn = connect_sync(odd, readonly=True)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hash#dir?q=1"]  # no stray file


async def test_a_tight_write_loop_still_checkpoints(tmp_path: Path) -> None:
    # A bulk write loop that never yields starves the background checkpoint;
    # the inline fallback keeps the WAL from growing with every write.
    db = Database(tmp_path / "system.db")
    await db.open()
    wal = tmp_path / "system.db-wal"

    try:
        await write_rows(db, 2500, yields=False)
        after = wal.stat().st_size
        await write_rows(db, 5000, yields=False)
        assert wal.stat().st_size < 1.5 * after
        assert db.checkpoints >= 6
    finally:
        await db.close()
