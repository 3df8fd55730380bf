"""A synthetic chat corpus for the benchmarks: N messages in a real Vigil database.

Words follow a Zipf-like distribution over a made-up vocabulary (so common
words match a large share of messages, rare ones a handful, as in real chat
logs). Generation is one ``executemany`` in one transaction on plain sqlite3,
with the schema's own triggers keeping the FTS index, so the result is exactly
what Vigil would have written. The file is cached between runs.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

from core.database import connect_sync, migrate_sync

SYLLABLES = [a + b for a in "bcdfghklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]
DEFAULT_DB = Path("/tmp/vigil-bench/messages-1m.db")


def vocabulary(size: int = 20_000, *, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words, key=lambda w: (len(w), w))


def _weights(size: int, s: float = 1.07) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, size + 1)]


def _rows(count: int, chats: int, seed: int) -> Iterator[tuple[str, str, str, int, float]]:
    rng = random.Random(seed)
    vocab = vocabulary()
    weights = _weights(len(vocab))
    start = time.time() - count * 2.0
    cum = list(itertools.accumulate(weights))
    pool = rng.choices(vocab, cum_weights=cum, k=1 << 20)
    lengths = [rng.randint(6, 30) for _ in range(4096)]
    at = 0
    for i in range(count):
        n = lengths[i % 4096]
        if at + n > len(pool):
            at = rng.randrange(64)  # reuse the pool from a shifted start
        text = " ".join(pool[at : at + n]).capitalize() + "."
        at += n
        role = "user" if i % 2 == 0 else "assistant"
        yield (f"telegram:{i % chats}", role, text, len(text) // 4, start + i * 2.0)


def build(path: Path, count: int, *, chats: int = 2000, seed: int = 1) -> float:
    """Create ``path`` with ``count`` messages; returns the seconds it took."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    conn = connect_sync(path)
    migrate_sync(conn)
    conn.execute("PRAGMA synchronous=OFF")
    # The per-row FTS trigger is ~5x slower than one bulk 'rebuild'; the trigger is put
    # back from its own stored SQL, so the schema ends exactly as Vigil made it.
    trigger = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'messages_fts_insert'"
    ).fetchone()[0]
    conn.execute("BEGIN")
    conn.execute("DROP TRIGGER messages_fts_insert")
    conn.executemany(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at) VALUES (?, ?, ?, ?, ?)",
        _rows(count, chats, seed),
    )
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    conn.execute(trigger)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def ensure(path: Path, count: int) -> tuple[Path, float | None]:
    """Reuse ``path`` if it already holds ``count`` messages, else build it."""
    if path.exists():
        conn = connect_sync(path, readonly=True)
        try:
            have = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            conn.close()
        if have == count:
            return path, None
    return path, build(path, count)
