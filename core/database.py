"""SQLite access: one writer connection, a few reader connections, migrations.

All writes in a process go through :meth:`Database.write` or
:meth:`Database.transaction`, serialised by one lock on one connection (the
datasette "one write path" habit). Readers are separate WAL connections, so
reads never wait for a write. The database file is created 0600 inside a
0700 data directory. SQLite errors are translated into ``StorageError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from core.errors import StorageError, StorageFull
from core.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-16000",
)
BUSY_TIMEOUT_S = 5.0


class NewerSchema(StorageError):
    code = "schema_too_new"


def prepare_file(path: Path) -> None:
    """Create the data dir (0700) and an empty db file (0600) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def connect_sync(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A plain sqlite3 connection with Vigil's pragmas (tools, backups, tests)."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
    else:
        prepare_file(path)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS:
        if readonly and "journal_mode" in pragma:
            continue
        conn.execute(pragma)
    return conn


def migrate_sync(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Apply pending migrations up to ``target``; returns the version reached."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise NewerSchema(
            f"database schema version {version} is newer than this Vigil ({SCHEMA_VERSION}); "
            "upgrade Vigil or restore an older backup",
            version=version,
        )
    for number in range(version + 1, target + 1):
        script = MIGRATIONS[number - 1]
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        log.info("database migrated to schema version %d", number)
    return max(version, target)


def translate(exc: sqlite3.Error, what: str) -> StorageError:
    text = str(exc)
    if "disk is full" in text or "disk I/O error" in text:
        return StorageFull(f"{what}: the disk is full; free space in the data directory")
    if "locked" in text or "busy" in text:
        return StorageError(f"{what}: the database is busy, try again", retry_after=1)
    return StorageError(f"{what}: {text}")


class Database:
    """The async handle on ``system.db`` used by the server, tasks and CLI."""

    def __init__(self, path: Path, *, readers: int = 2) -> None:
        self.path = path
        self._reader_count = max(1, readers)
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle([0])
        self._write_lock = asyncio.Lock()
        self.writes = 0

    async def open(self) -> None:
        prepare_file(self.path)
        await asyncio.to_thread(self._migrate)
        self._writer = await self._connect()
        self._readers = [await self._connect() for _ in range(self._reader_count)]
        self._next_reader = itertools.cycle(range(len(self._readers)))

    def _migrate(self) -> None:
        conn = connect_sync(self.path)
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
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._readers, self._writer = [], None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def _require_writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StorageError("the database is not open")
        return self._writer

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement as its own committed transaction; returns lastrowid."""
        writer = self._require_writer()
        async with self._write_lock:
            try:
                rowid = await writer.execute_insert(sql, params)
            except sqlite3.Error as exc:
                raise translate(exc, "write failed") from exc
        self.writes += 1
        return int(rowid[0]) if rowid else 0

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer, rolled back on error."""
        writer = self._require_writer()
        async with self._write_lock:
            try:
                await writer.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc, "could not start a transaction") from exc
            try:
                yield writer
                await writer.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, "transaction failed") from exc
                raise
        self.writes += 1

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

    async def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
            raise ValueError(mode)
        async with self._write_lock:
            rows = await self._require_writer().execute_fetchall(f"PRAGMA wal_checkpoint({mode})")
        first = next(iter(rows))
        return int(first[0]), int(first[1]), int(first[2])
