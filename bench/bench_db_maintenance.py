"""``vigilctl db vacuum|analyze|reindex|checkpoint`` at N messages, against the sqlite3 shell.

    .venv/bin/python bench/bench_db_maintenance.py [--messages 100000] [--repeat 3]

Each operation runs on a fresh copy of the corpus (``bench/corpus.py``) in
which the older 30 % of the messages were deleted (so VACUUM has pages to
reclaim), three ways:

  * the sqlite3 shell: ``sqlite3 FILE 'VACUUM'`` (the raw baseline);
  * Vigil directly (server stopped): ``core.dbops.run_operation`` on a
    ``connect_sync`` connection, what the CLI does;
  * Vigil through the server's writer: ``Database.run_exclusive`` (under the
    write lock, on the db thread), what ``POST /admin/db/<op>`` does, while
    a writer task appends one message every 10 ms on the same Database (a
    busy server); its worst wait is reported.

Prints a Markdown table of medians (seconds) and the file figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import ensure
from core import dbops
from core.database import Database, connect_sync

OPERATIONS = ("vacuum", "analyze", "reindex", "checkpoint")
SHELL = {
    "vacuum": "VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
    "analyze": "ANALYZE; PRAGMA optimize;",
    "reindex": "REINDEX;",
    "checkpoint": "PRAGMA wal_checkpoint(TRUNCATE);",
}


def thinned(source: Path, work: Path) -> Path:
    target = work / "system.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    conn = sqlite3.connect(target)
    conn.execute("DELETE FROM messages WHERE id <= (SELECT max(id) * 3 / 10 FROM messages)")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return target


def shell(db: Path, operation: str) -> float:
    started = time.perf_counter()
    subprocess.run(["sqlite3", str(db), SHELL[operation]], check=True, capture_output=True)
    return time.perf_counter() - started


def direct(db: Path, operation: str) -> float:
    conn = connect_sync(db, create=False)
    try:
        started = time.perf_counter()
        dbops.run_operation(conn, db, operation)
        return time.perf_counter() - started
    finally:
        conn.close()


async def _server(db: Path, operation: str) -> tuple[float, float, int]:
    database = Database(db)
    await database.open()
    waits: list[float] = []
    stop = asyncio.Event()

    async def chatter() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            await database.write(
                "INSERT INTO messages (chat_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                ("local:bench", "user", f"turn {n}", time.time()),
            )
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    writer = asyncio.ensure_future(chatter())
    await asyncio.sleep(0.2)
    try:
        started = time.perf_counter()
        await database.run_exclusive(lambda conn: dbops.run_operation(conn, db, operation))
        took = time.perf_counter() - started
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await writer
        await database.close()
    return took, max(waits), len(waits)


def server(db: Path, operation: str) -> tuple[float, float, int]:
    return asyncio.run(_server(db, operation))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    source, built = ensure(Path(f"/tmp/vigil-bench/messages-{args.messages}.db"), args.messages)
    if built:
        print(f"corpus built in {built:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-db-") as tmp:
        work = Path(tmp)
        db = thinned(source, work)
        conn = connect_sync(db, readonly=True)
        before = dbops.figures(conn, db)
        conn.close()
        print(
            f"{args.messages} messages, 30 % deleted: {before['size_bytes'] / 1e6:.1f} MB, "
            f"{before['freelist_pages']} of {before['pages']} pages free"
        )
        print()
        print(
            "| operation | sqlite3 shell s | Vigil direct s | Vigil via server s | "
            "writer max wait s (writes during it) |"
        )
        print("| --- | ---: | ---: | ---: | ---: |")
        for operation in OPERATIONS:
            raw, mine, served, worst, writes = [], [], [], [], []
            for _ in range(args.repeat):
                raw.append(shell(thinned(source, work), operation))
                mine.append(direct(thinned(source, work), operation))
                took, wait, count = server(thinned(source, work), operation)
                served.append(took)
                worst.append(wait)
                writes.append(count)
            print(
                f"| {operation} | {statistics.median(raw):.3f} | {statistics.median(mine):.3f} "
                f"| {statistics.median(served):.3f} | {statistics.median(worst):.3f} "
                f"({statistics.median(writes):.0f}) |"
            )


if __name__ == "__main__":
    main()
