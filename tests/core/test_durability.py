"""Acknowledged = committed: the writer connection never leaves work uncommitted.

Many concurrent appends interleave with background and inline WAL
checkpoints and with transactions (a summary fold, a reset). Every id that
``Database.write`` returned must then exist, with its content, as seen from
another connection. Before every statement on the writer was stepped to its
end, a checkpoint pragma left open kept later autocommit inserts
uncommitted, and the next transaction's ROLLBACK discarded them.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from core.database import Database, WriterStateError, connect_sync, migrate_sync
from core.errors import DatabaseReplaced

INSERT = (
    "INSERT INTO messages (chat_id, role, content, tokens, created_at) VALUES (?, 'user', ?, 1, 0)"
)


async def open_db(tmp_path: Path, *, every: int, inline_after: int) -> Database:
    db = Database(tmp_path / "system.db")
    db.CHECKPOINT_EVERY = every
    db.CHECKPOINT_INLINE_AFTER = inline_after
    await db.open()
    for chat in ["fold", "local:a", "local:x", *(f"local:c{i}" for i in range(8))]:
        await db.write(
            "INSERT INTO chats (id, channel, created_at, updated_at) VALUES (?, 'local', 0, 0)",
            (chat,),
        )
    return db


async def appender(db: Database, chat: str, count: int, acked: dict[int, str]) -> None:
    for n in range(count):
        content = f"{chat} message {n}"
        rowid = await db.write(INSERT, (chat, content))
        acked[rowid] = content
        if n % 3 == 0:
            await asyncio.sleep(0)


async def folder(db: Database, rounds: int, acked: dict[int, str], failures: list[str]) -> None:
    """Summary folds and resets: transactions between the appends."""
    rng = random.Random(7)
    for n in range(rounds):
        await asyncio.sleep(rng.random() * 0.002)
        try:
            async with db.transaction() as conn:
                cur = await conn.execute(INSERT, ("fold", f"fold {n}"))
                rowid = cur.lastrowid
                await conn.execute(
                    "UPDATE chats SET summary = ?, summary_upto_id = ? WHERE id = 'fold'",
                    (f"summary {n}", rowid),
                )
            assert rowid is not None
            acked[rowid] = f"fold {n}"
            if n % 5 == 4:  # a reset of a chat nobody else writes to
                async with db.transaction() as conn:
                    await conn.execute("DELETE FROM messages WHERE chat_id = 'fold'")
                for key in [k for k, v in acked.items() if v.startswith("fold ")]:
                    del acked[key]
        except Exception as exc:  # collected: any failure here is the bug
            failures.append(repr(exc))


def committed(path: Path) -> dict[int, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT id, content FROM messages").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("every,inline_after", [(3, 10_000), (2, 7), (5, 11)])
async def test_every_acknowledged_write_is_committed(
    tmp_path: Path, every: int, inline_after: int
) -> None:
    db = await open_db(tmp_path, every=every, inline_after=inline_after)
    acked: dict[int, str] = {}
    failures: list[str] = []
    try:
        await asyncio.gather(
            *(appender(db, f"local:c{i}", 300, acked) for i in range(8)),
            folder(db, 60, acked, failures),
        )
        # Seen from another connection while the server's is still open: a
        # write left uncommitted behind an open statement would be missing.
        seen = committed(db.path)
    finally:
        await db.close()
    assert failures == []
    assert db.checkpoints > 10  # the race needs checkpoints between the writes
    missing = {k: v for k, v in acked.items() if seen.get(k) != v}
    assert missing == {}
    assert len(acked) >= 8 * 300
    assert committed(db.path) == seen


async def test_no_statement_stays_active_on_the_writer(tmp_path: Path) -> None:
    db = await open_db(tmp_path, every=1, inline_after=1)
    try:
        for n in range(20):
            await db.write(INSERT, ("local:a", f"m{n}"))
            await asyncio.sleep(0)
        await db.checkpoint("PASSIVE")
        assert db.pragma("wal_checkpoint(PASSIVE)") is not None
        writer = db._writer
        assert writer is not None
        assert not writer.in_transaction
        # SQLite's own view: no prepared statement of the writer is mid-step.
        # A BEGIN/COMMIT pair succeeds only when nothing is in progress.
        writer.execute("BEGIN IMMEDIATE").close()
        writer.execute("COMMIT").close()
    finally:
        await db.close()


async def test_a_transaction_never_rolls_back_work_it_did_not_start(tmp_path: Path) -> None:
    db = await open_db(tmp_path, every=200, inline_after=1000)
    try:
        writer = db._writer
        assert writer is not None
        writer.execute("BEGIN")  # someone else's unfinished work (a bug elsewhere)
        writer.execute(INSERT, ("local:x", "not ours")).close()
        with pytest.raises(WriterStateError):
            async with db.transaction() as conn:
                await conn.execute(INSERT, ("local:x", "ours"))
        with pytest.raises(WriterStateError):
            await db.write(INSERT, ("local:x", "a write"))
        # Nothing was rolled back on the way: the foreign work is still there.
        assert writer.in_transaction
        rows = writer.execute("SELECT content FROM messages WHERE chat_id = 'local:x'").fetchall()
        assert [r[0] for r in rows] == ["not ours"]
        writer.execute("COMMIT")
    finally:
        await db.close()
    check = connect_sync(tmp_path / "system.db", readonly=True)
    assert [tuple(r) for r in check.execute("SELECT content FROM messages")] == [("not ours",)]
    check.close()


async def test_a_cancelled_slow_write_keeps_the_lock_until_its_statement_ended(
    tmp_path: Path,
) -> None:
    """A write waiting on the db thread for another process's lock, then cancelled.

    The lock must stay held until the statement on the thread ended; a write
    that got in meanwhile would share the connection with it.
    """
    db = await open_db(tmp_path, every=10_000, inline_after=10_000)
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        slow = asyncio.ensure_future(db.write(INSERT, ("local:a", "slow")))
        for _ in range(100):  # until it waits on the db thread
            await asyncio.sleep(0.01)
            if db.slow_writes:
                break
        assert db.slow_writes == 1
        slow.cancel()
        await asyncio.sleep(0.05)
        assert not slow.done()  # still waiting for its statement to end
        assert db._write_lock.locked()
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert not db._write_lock.locked()
        # The connection is clean: a transaction and a write go through.
        async with db.transaction() as conn:
            await conn.execute(INSERT, ("local:a", "after"))
        rowid = await db.write(INSERT, ("local:a", "after 2"))
        assert committed(db.path)[rowid] == "after 2"
    finally:
        other.close()
        await db.close()


async def test_a_transaction_cancelled_while_its_begin_waits_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    db = await open_db(tmp_path, every=10_000, inline_after=10_000)
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def fold() -> None:
        async with db.transaction() as conn:
            await conn.execute(INSERT, ("local:a", "fold"))

    try:
        task = asyncio.ensure_future(fold())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if db.slow_writes:
                break
        task.cancel()
        await asyncio.sleep(0.05)
        other.execute("COMMIT")  # BEGIN on the thread now succeeds, then the cancel lands
        with pytest.raises(asyncio.CancelledError):
            await task
        writer = db._writer
        assert writer is not None and not writer.in_transaction
        rowid = await db.write(INSERT, ("local:a", "next"))
        assert committed(db.path)[rowid] == "next"
        assert "fold" not in committed(db.path).values()
    finally:
        other.close()
        await db.close()


async def test_a_write_after_the_file_was_replaced_is_refused_at_once(tmp_path: Path) -> None:
    """No 2 s window: the write itself checks the file, before and after its commit."""
    db = await open_db(tmp_path, every=10_000, inline_after=10_000)
    try:
        await db.write(INSERT, ("local:a", "before"))
        other = tmp_path / "other.db"
        connect_sync(other).close()
        os.replace(other, db.path)
        with pytest.raises(DatabaseReplaced):
            await db.write(INSERT, ("local:a", "after"))
        with pytest.raises(DatabaseReplaced):
            async with db.transaction() as conn:
                await conn.execute(INSERT, ("local:a", "in a transaction"))
        assert db.replaced == "replaced"
        assert db.replaced_event.is_set()
    finally:
        await db.close()


async def test_a_stale_wal_is_never_applied_to_a_new_file(tmp_path: Path) -> None:
    """The old file's -wal at the path (a killed server) is moved aside before any open."""
    db = await open_db(tmp_path, every=10_000, inline_after=10_000)
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(db.path)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.execute(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
        " VALUES ('local:a', 'user', 'restored', 1, 0)"
    )
    target.commit()
    target.close()
    for n in range(300):  # frames in the old file's WAL that the copy never had
        await db.write(INSERT, ("local:a", f"old {n}"))
    assert Path(f"{db.path}-wal").stat().st_size > 0
    os.replace(copy, db.path)
    # The server is "killed": its connections are abandoned, not closed.
    worker = connect_sync(db.path, create=False)  # what the worker or the next server does
    try:
        contents = [r[0] for r in worker.execute("SELECT content FROM messages")]
        assert worker.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        worker.close()
    assert "restored" in contents
    assert not any(c.startswith("old ") for c in contents)
    assert list(tmp_path.glob("system.db-wal.stale-*"))
    await db.close()


def _migrate_after(path: Path, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    conn = connect_sync(path, create=False)
    try:
        barrier.wait()
        migrate_sync(conn)
    except BaseException as exc:  # collected for the assertion
        errors.append(exc)
    finally:
        conn.close()


def test_two_processes_migrating_at_once_both_succeed(tmp_path: Path) -> None:
    """The server and the worker start together and both migrate a new file."""
    for trial in range(6):
        path = tmp_path / f"race{trial}.db"
        connect_sync(path).close()
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_migrate_after, args=(path, barrier, errors)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


async def test_a_second_opener_keeps_the_new_files_own_wal(tmp_path: Path) -> None:
    """After a replacement the first opener moves the old WAL aside and records
    the new file as the owner, so the next opener leaves the new WAL alone."""
    db = await open_db(tmp_path, every=10_000, inline_after=10_000)
    await db.write(INSERT, ("local:a", "old"))
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(db.path)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    os.replace(copy, db.path)
    first = connect_sync(db.path, create=False)  # the worker, say
    second = None
    try:
        first.execute("PRAGMA wal_autocheckpoint=0")
        first.execute(
            "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
            " VALUES ('local:a', 'user', 'in the new file', 1, 0)"
        )
        assert Path(f"{db.path}-wal").stat().st_size > 0  # not checkpointed yet
        second = connect_sync(db.path, create=False)  # the supervisor's record, say
        contents = [r[0] for r in second.execute("SELECT content FROM messages")]
        assert "in the new file" in contents
        assert len(list(tmp_path.glob("system.db-wal.stale-*"))) == 1  # the old one only
    finally:
        first.close()
        if second is not None:
            second.close()
        await db.close()
