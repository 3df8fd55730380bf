"""Search latency at N messages (default 1M): ChatMemory.search vs raw FTS5 MATCH.

    .venv/bin/python bench/bench_search.py [--messages 1000000] [--queries 300]

Queries come from the corpus vocabulary in four classes: common words (match a
large share of all messages), mid-frequency, rare, and two mid words ANDed.
Rows, measured in the same run on the same warm database:
  * ChatMemory.search (what ``python main.py search`` and the API run: quoted
    words, bm25 rank, snippet, join to messages), through the async Database;
  * raw FTS5 ``MATCH ... ORDER BY rank LIMIT 20`` on plain sqlite3 (baseline);
  * raw FTS5 ``MATCH ... ORDER BY rowid DESC LIMIT 20`` (newest first: no
    ranking of every match) for comparison;
  * raw FTS5 with bm25 over only the newest 1000 matches (a proposal for
    ChatMemory.search: relevance order with a bounded cost).
Target: p99 < 20 ms for ChatMemory.search.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import DEFAULT_DB, ensure, vocabulary
from core.database import Database
from core.memory import ChatMemory, fts_query

LIMIT = 20


def make_queries(count: int, seed: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    vocab = vocabulary()  # ordered like the corpus' Zipf ranks
    classes: list[tuple[str, Callable[[], str]]] = [
        ("common", lambda: vocab[rng.randrange(0, 30)]),
        ("mid", lambda: vocab[rng.randrange(200, 2000)]),
        ("rare", lambda: vocab[rng.randrange(8000, 20000)]),
        ("two words", lambda: f"{vocab[rng.randrange(30, 600)]} {vocab[rng.randrange(30, 600)]}"),
    ]
    return [(name, make()) for i in range(count) for name, make in [classes[i % len(classes)]]]


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


async def time_memory(db_path: Path, queries: list[tuple[str, str]]) -> list[float]:
    db = Database(db_path, readers=1)
    await db.open()
    memory = ChatMemory(db)
    try:
        for _, text in queries[:20]:  # warm the page cache
            await memory.search(text, limit=LIMIT)
        return [await _timed(lambda t=text: memory.search(t, limit=LIMIT)) for _, text in queries]
    finally:
        await db.close()


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1000


RAW = "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY {order} LIMIT 20"
# Proposal: bm25 only over the newest WINDOW matches, so a word in every other
# message costs WINDOW rank computations instead of hundreds of thousands.
WINDOW = 1000
BOUNDED = (
    "SELECT rowid FROM (SELECT rowid, rank FROM messages_fts WHERE messages_fts MATCH ?"
    f" ORDER BY rowid DESC LIMIT {WINDOW}) ORDER BY rank LIMIT 20"
)


# The same bounded ranking as a drop-in for ChatMemory.search's query, returning the
# message columns of the 20 best of the newest WINDOW matches. FTS5's snippet() is
# left out: it re-runs the match per row; a highlight can be cut in Python instead.
PROPOSED = (
    "WITH newest AS (SELECT rowid AS id, rank FROM messages_fts WHERE messages_fts MATCH ?"
    f" ORDER BY rowid DESC LIMIT {WINDOW})"
    " SELECT m.id, m.chat_id, m.role, m.content, m.tokens, m.created_at, m.author,"
    " m.external_id, newest.rank FROM newest JOIN messages m ON m.id = newest.id"
    " ORDER BY newest.rank LIMIT 20"
)


def time_raw(db_path: Path, queries: list[tuple[str, str]], sql: str) -> list[float]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)

    for _, text in queries[:20]:
        conn.execute(sql, (fts_query(text),)).fetchall()
    samples = []
    for _, text in queries:
        started = time.perf_counter()
        conn.execute(sql, (fts_query(text),)).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    conn.close()
    return samples


def report(name: str, queries: list[tuple[str, str]], samples: list[float]) -> None:
    by_class: dict[str, list[float]] = {}
    for (cls, _), ms in zip(queries, samples, strict=True):
        by_class.setdefault(cls, []).append(ms)
    p50, p99, top = percentiles(samples)
    print(f"{name:<44} {'all':<10} {p50:>8.2f} {p99:>8.2f} {top:>8.2f}")
    for cls, values in by_class.items():
        c50, c99, ctop = percentiles(values)
        print(f"{'':<44} {cls:<10} {c50:>8.2f} {c99:>8.2f} {ctop:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    default = (
        DEFAULT_DB
        if args.messages == 1_000_000
        else DEFAULT_DB.with_name(f"messages-{args.messages}.db")
    )
    db, built = ensure(args.db or default, args.messages)
    if built is not None:
        print(f"generated {args.messages} messages in {built:.1f} s -> {db}")
    queries = make_queries(args.queries)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    common = queries[0][1]
    hits = conn.execute(
        "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (fts_query(common),)
    ).fetchone()[0]
    conn.close()
    print(f"database: {db}, {args.messages} messages, {len(queries)} queries, limit {LIMIT}")
    print(f"(a common word such as {common!r} matches {hits} messages)\n")
    print(f"{'method':<44} {'queries':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    report(
        "ChatMemory.search (bm25, snippet, join)", queries, asyncio.run(time_memory(db, queries))
    )
    report("raw FTS5 MATCH ORDER BY rank", queries, time_raw(db, queries, RAW.format(order="rank")))
    newest = RAW.format(order="rowid DESC")
    report("raw FTS5 MATCH ORDER BY rowid DESC", queries, time_raw(db, queries, newest))
    report(f"raw FTS5, bm25 over newest {WINDOW} matches", queries, time_raw(db, queries, BOUNDED))
    report("proposed search query (bounded, join)", queries, time_raw(db, queries, PROPOSED))


if __name__ == "__main__":
    main()
