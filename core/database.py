"""SQLite access: one writer connection, a few reader connections, migrations.

All writes in a process go through :meth:`Database.write` or
:meth:`Database.transaction`, serialised by one lock on one connection (the
datasette "one write path" habit). Readers are separate WAL connections, so
reads never wait for a write. The database file is created 0600 inside a
0700 data directory. SQLite errors are translated into ``StorageError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from core.errors import DatabaseReplaced, StorageError, StorageFull, StorageReadOnly
from core.sqlite import (
    BUSY_TIMEOUT_S,
    PRAGMAS,
    NewerSchema,
    connect_sync,
    file_identity,
    guard_stale_wal,
    migrate_sync,
    move_wal_aside,
    prepare_file,
    record_owner,
)

# Imported from here by most callers; they live in core/sqlite.py.
__all__ = [
    "BUSY_TIMEOUT_S",
    "Database",
    "NewerSchema",
    "connect_sync",
    "guard_stale_wal",
    "migrate_sync",
]

log = logging.getLogger(__name__)


def translate(exc: sqlite3.Error | UnicodeEncodeError, what: str) -> StorageError:
    if isinstance(exc, UnicodeEncodeError):
        return StorageError(f"{what}: the text is not valid Unicode (unpaired surrogate)")
    text = str(exc)
    if "disk is full" in text or "disk I/O error" in text:
        return StorageFull(f"{what}: the disk is full; free space in the data directory")
    if "readonly" in text or "read-only" in text:
        return StorageReadOnly(
            f"{what}: the database is read-only; check the permissions of the data directory"
        )
    if "locked" in text or "busy" in text:
        return StorageError(f"{what}: the database is busy, try again", retry_after=1)
    return StorageError(f"{what}: {text}")


class _Done:
    """What a finished statement left: its rows, ``lastrowid`` and ``rowcount``."""

    __slots__ = ("lastrowid", "rowcount", "rows")

    def __init__(self, rows: list[sqlite3.Row], lastrowid: int | None, rowcount: int) -> None:
        self.rows = rows
        self.lastrowid = lastrowid
        self.rowcount = rowcount


def run_to_completion(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> _Done:
    """Execute one statement, step it to its end and reset it.

    The only way statements reach the writer connection. A statement left
    active (a ``PRAGMA wal_checkpoint`` whose row was never read) keeps every
    later autocommit write on that connection uncommitted: the write "returns"
    but is invisible to other connections and lost on a crash or a ROLLBACK.
    Fetching every row and closing the cursor makes that impossible.
    """
    cursor = conn.execute(sql, params)
    try:
        rows = cursor.fetchall()
        return _Done(rows, cursor.lastrowid, cursor.rowcount)
    finally:
        cursor.close()


def run_many_to_completion(
    conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]
) -> _Done:
    cursor = conn.executemany(sql, rows)
    try:
        return _Done([], cursor.lastrowid, cursor.rowcount)
    finally:
        cursor.close()


class _Cursor:
    """Async-looking view of a finished statement (aiosqlite-compatible)."""

    def __init__(self, done: _Done) -> None:
        self._rows = done.rows
        self.rowcount = done.rowcount
        self.lastrowid = done.lastrowid

    async def fetchone(self) -> sqlite3.Row | None:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[sqlite3.Row]:
        rows, self._rows = self._rows, []
        return rows


class Transaction:
    """The writer connection inside ``Database.transaction()``.

    Every statement is run to completion before the call returns, so the
    COMMIT at the end never meets a statement still in progress.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(run_to_completion(self._conn, sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Cursor:
        return _Cursor(run_many_to_completion(self._conn, sql, rows))

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return run_to_completion(self._conn, sql, params).rows


class WriterStateError(StorageError):
    """The writer connection is in a state no code path may leave it in (a bug)."""

    code = "storage_error"


class Database:
    """The async handle on ``system.db`` used by the server, tasks and CLI.

    Writes are small and run *inline* on the event loop: a thread hop costs
    about as much as the insert itself (see docs/performance.md). The writer
    waits at most ``INLINE_BUSY_MS`` for a lock held by another process (the
    Huey worker, the CLI) and then retries on a thread with the full busy
    timeout, so the loop never stalls for long. Heavy reads run on aiosqlite
    reader threads.
    """

    INLINE_BUSY_MS = 20
    CHECKPOINT_EVERY = 200  # writes between WAL checkpoints (on the db thread)
    CHECKPOINT_INLINE_AFTER = 1000  # a loop that never yields: checkpoint inline

    def __init__(self, path: Path, *, readers: int = 2) -> None:
        self.path = path
        self._reader_count = max(1, readers)
        self._writer: sqlite3.Connection | None = None
        self._quick_reader: sqlite3.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle([0])
        self._write_lock = asyncio.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.writes = 0
        self.slow_writes = 0
        self.checkpoints = 0
        self.write_errors = 0
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        # What /health reports about writes (monotonic times; None = never).
        self.last_write_ok_at: float | None = None
        self.last_write_error: StorageError | None = None
        self.last_write_error_at: float | None = None
        # The file we opened (st_dev, st_ino); set when it changes under us.
        self.identity: tuple[int, int] | None = None
        self.replaced: str | None = None
        self.replaced_event = asyncio.Event()  # set at the first change seen

    async def open(self, *, create: bool = True) -> None:
        """Open (and migrate) ``system.db``.

        ``create=False`` is for processes that must never create the database
        (the Huey worker): a missing file raises ``StorageError`` instead.
        """
        guard_stale_wal(self.path)
        if create:
            prepare_file(self.path)
        elif not self.path.exists():
            raise StorageError(f"{self.path} does not exist yet (the server creates it)")
        await asyncio.to_thread(self._migrate, create)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vigil-db")
        writer = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=rw",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        writer.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            run_to_completion(writer, pragma)
        run_to_completion(writer, f"PRAGMA busy_timeout={self.INLINE_BUSY_MS}")
        # SQLite's automatic checkpoint would run inline in a commit and stall the
        # event loop for its fsync; _wrote() schedules it on the db thread instead.
        run_to_completion(writer, "PRAGMA wal_autocheckpoint=0")
        self._writer = writer
        self.identity = file_identity(self.path)
        if create:  # the server (the one process that may create it) owns the WAL
            record_owner(self.path)
        # read_now() must not share the writer: while a write waits on the db
        # thread for another process's lock, the loop would block behind it.
        quick = sqlite3.connect(
            self.path, timeout=0.05, isolation_level=None, check_same_thread=False
        )
        quick.row_factory = sqlite3.Row
        quick.execute("PRAGMA query_only=ON")
        self._quick_reader = quick
        self._readers = [await self._connect() for _ in range(self._reader_count)]
        self._next_reader = itertools.cycle(range(len(self._readers)))

    def _migrate(self, create: bool) -> None:
        try:
            conn = connect_sync(self.path, create=create)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        try:
            migrate_sync(conn)
        finally:
            conn.close()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        for conn in self._readers:
            with contextlib.suppress(Exception):
                await conn.close()
        self._readers = []
        if self._quick_reader is not None:
            self._quick_reader.close()
            self._quick_reader = None
        if self._writer is not None:
            if self.replaced is None:
                with contextlib.suppress(sqlite3.Error):
                    run_to_completion(self._writer, "PRAGMA wal_checkpoint(PASSIVE)")
            self._writer.close()
            self._writer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def check_file(self) -> str | None:
        """Has ``system.db`` been deleted or replaced since we opened it?

        Compares the device and inode of the path with the file we hold open
        (cheap: one ``stat``). The first change seen is sticky: from then on
        every write is refused with ``database_replaced``, since it would go
        to a file nobody will read again.
        """
        if self.replaced is not None or self.identity is None:
            return self.replaced
        try:
            now = file_identity(self.path)
        except FileNotFoundError:
            self.replaced = "deleted"
        except OSError as exc:  # e.g. the directory became unreadable: not a replacement
            log.warning("could not stat %s: %s", self.path, exc)
            return None
        else:
            if now != self.identity:
                self.replaced = "replaced"
        if self.replaced is not None:
            log.error(
                "%s was %s while the server was running; refusing writes until a restart",
                self.path,
                self.replaced,
            )
            set_aside_own_wal(self.path)
            self.replaced_event.set()
        return self.replaced

    async def copy_open_file(self, target: Path) -> None:
        """Copy the file this process holds open (even deleted) to ``target``.

        The SQLite backup API through the writer, under the write lock and
        on the db thread: what the server acknowledged survives an ``rm``.
        """
        writer = self._writer
        if writer is None:
            raise StorageError("the database is not open")
        prepare_file(target)

        def copy() -> None:
            dest = sqlite3.connect(target)
            try:
                writer.backup(dest)
            finally:
                dest.close()

        async with self._write_lock:
            await self._finish_on_thread(copy)

    def _refuse_if_replaced(self) -> None:
        if self.check_file() is not None:
            raise DatabaseReplaced(
                f"{self.path.name} was {self.replaced} under the running server; "
                "writes are refused until it restarts on the new file"
            )

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StorageError("the database is not open")
        self._refuse_if_replaced()  # one stat: a write to a file nobody reads is lost
        writer = self._writer
        if writer.in_transaction:
            # Only transaction() opens a transaction, and it always ends it
            # under the write lock: reaching here inside one is a bug, and
            # carrying on would commit or roll back someone else's work.
            raise WriterStateError("the writer connection is inside an unfinished transaction")
        return writer

    async def _on_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` with the full busy timeout on the db thread."""
        writer = self._writer
        assert writer is not None
        self.slow_writes += 1

        def patient() -> Any:
            run_to_completion(writer, f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            try:
                return fn(*args)
            finally:
                run_to_completion(writer, f"PRAGMA busy_timeout={self.INLINE_BUSY_MS}")

        return await self._finish_on_thread(patient)

    async def _finish_on_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the db thread and wait for it to end, even when cancelled.

        The caller holds the write lock. A cancellation (a client gone, a
        shutdown) must not release the lock while the db thread still runs a
        statement on the writer: the next write would interleave with it on
        the same connection. So the wait goes on until the statement ended,
        and the cancellation is passed on after that.
        """
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        cancelled = False
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return future.result()

    def _failed(self, exc: sqlite3.Error | UnicodeEncodeError, what: str) -> StorageError:
        error = translate(exc, what)
        if isinstance(exc, sqlite3.Error):  # bad input (a lone surrogate) is not a storage fault
            self.write_errors += 1  # vigil_errors{kind="database"}
            self.last_write_error = error
            self.last_write_error_at = time.monotonic()
        return error

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement as its own committed transaction; returns lastrowid.

        Returns only after the commit: the statement runs in autocommit mode,
        is stepped to its end, and the connection is checked to be outside
        any transaction before and after.
        """
        async with self._write_lock:
            writer = self._require_writer()
            try:
                try:
                    done = run_to_completion(writer, sql, params)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    done = await self._on_thread(run_to_completion, writer, sql, params)
            except (sqlite3.Error, UnicodeEncodeError) as exc:
                raise self._failed(exc, "write failed") from exc
            if writer.in_transaction:  # a statement that opened a transaction: not committed
                raise WriterStateError(f"write left a transaction open: {sql[:60]}")
            # Acknowledge only what went to the file at the path: a replacement
            # during the statement means it committed to a file nobody reads.
            self._refuse_if_replaced()
        self._wrote()
        return int(done.lastrowid or 0)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer, rolled back on error.

        Only work this transaction started is ever rolled back: the writer is
        checked to be outside any transaction before BEGIN (a loud
        ``WriterStateError`` otherwise, never a silent discard).
        """
        async with self._write_lock:
            writer = self._require_writer()
            try:
                try:
                    run_to_completion(writer, "BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    await self._on_thread(run_to_completion, writer, "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._failed(exc, "could not start a transaction") from exc
            except BaseException:  # cancelled after our BEGIN went through on the thread
                if writer.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        run_to_completion(writer, "ROLLBACK")
                raise
            try:
                yield Transaction(writer)
                run_to_completion(writer, "COMMIT")
                self._refuse_if_replaced()
            except BaseException as exc:
                if writer.in_transaction:  # ours: BEGIN above succeeded
                    with contextlib.suppress(sqlite3.Error):
                        run_to_completion(writer, "ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc, "transaction failed") from exc
                raise
        self._wrote()

    def _wrote(self) -> None:
        self.writes += 1
        self.last_write_ok_at = time.monotonic()
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.CHECKPOINT_INLINE_AFTER and not self._write_lock.locked():
            # A bulk-write loop that never yields starves the background
            # checkpoint, and a growing WAL slows every write: do it here.
            with contextlib.suppress(sqlite3.Error, StorageError):
                run_to_completion(self._require_writer(), "PRAGMA wal_checkpoint(PASSIVE)")
                self.checkpoints += 1
            self._since_checkpoint = 0
        elif self._since_checkpoint >= self.CHECKPOINT_EVERY and self._checkpointing is None:
            self._checkpointing = asyncio.ensure_future(self._checkpoint_in_background())

    async def _checkpoint_in_background(self) -> None:
        """PASSIVE checkpoint on the db thread, holding the write lock.

        Holding the lock lets the checkpoint reach the end of the WAL, so the
        next write starts the WAL over (a checkpoint racing new writes never
        catches up and the WAL grows without bound). Writes wait a few ms;
        the event loop does not.
        """
        try:
            async with self._write_lock:
                writer = self._require_writer()
                await self._finish_on_thread(
                    run_to_completion, writer, "PRAGMA wal_checkpoint(PASSIVE)"
                )
                self._since_checkpoint = 0
                self.checkpoints += 1
        except DatabaseReplaced:
            pass  # reported by /health; nothing to checkpoint into
        except Exception:  # a failed checkpoint is retried after the next writes
            log.warning("background WAL checkpoint failed", exc_info=True)
        finally:
            self._checkpointing = None

    def read_now(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A small indexed read inline on the loop (hot path: window rebuild).

        Its own read-only connection with a 50 ms busy timeout: a WAL read
        needs no lock, so it never waits behind a write.
        """
        if self._quick_reader is None:
            raise StorageError("the database is not open")
        try:
            return list(self._quick_reader.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise translate(exc, "read failed") from exc

    def pragma(self, statement: str) -> Any:
        """``PRAGMA <statement>`` on the writer connection (tuning, tests)."""
        rows = run_to_completion(self._require_writer(), f"PRAGMA {statement}").rows
        return rows[0][0] if rows else None

    def _reader(self) -> aiosqlite.Connection:
        if not self._readers:
            raise StorageError("the database is not open")
        return self._readers[next(self._next_reader)]

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            rows = await self._reader().execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise translate(exc, "read failed") from exc
        return list(rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return row[0] if row is not None else None

    async def ping(self) -> None:
        """A cheap liveness query for health checks."""
        await self.scalar("SELECT count(*) FROM sqlite_master")

    async def run_exclusive(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(writer)`` alone: under the write lock, on the db thread, full busy timeout.

        For long operator work (VACUUM, a data deletion): every other write of
        this process waits for the lock instead of failing, and the event loop
        stays free. ``fn`` may BEGIN and COMMIT its own transactions but must
        leave none open (``WriterStateError`` otherwise, after a rollback).
        """
        async with self._write_lock:
            writer = self._require_writer()

            def alone() -> Any:
                try:
                    result = fn(writer)
                finally:
                    if writer.in_transaction:  # fn's own transaction: never someone else's
                        with contextlib.suppress(sqlite3.Error):
                            run_to_completion(writer, "ROLLBACK")
                        left_open = True
                    else:
                        left_open = False
                if left_open:
                    raise WriterStateError("maintenance work left a transaction open")
                return result

            try:
                result = await self._on_thread(alone)
            except sqlite3.Error as exc:  # the operator's command failed, not the chat writes
                raise translate(exc, "maintenance failed") from exc
            self._refuse_if_replaced()
            self._since_checkpoint = 0
        return result

    async def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(mode)`` on a thread; (busy, log, checkpointed)."""
        if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
            raise ValueError(mode)
        async with self._write_lock:
            writer = self._require_writer()
            done = await self._on_thread(
                run_to_completion, writer, f"PRAGMA wal_checkpoint({mode})"
            )
        row = done.rows[0]
        return int(row[0]), int(row[1]), int(row[2])


def set_aside_own_wal(path: Path) -> list[Path]:
    """Move this process's ``-wal``/``-shm`` of a replaced database out of the path.

    They belong to the file we still hold open, not to the one now at the
    path; left there, the next connection to the new file would read the old
    file's pages from them (silent corruption). Only files that this process
    has open (same inode as one of our descriptors) are moved.
    """
    return move_wal_aside(path, "replaced", only=_open_inodes())


def _open_inodes() -> set[tuple[int, int]]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/self/fd/{fd}")
                found.add((st.st_dev, st.st_ino))
    return found


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text
