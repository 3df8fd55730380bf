"""The server's counter buffer over a real database: additive flushes, never lower."""

from __future__ import annotations

import math
from pathlib import Path

from core import counters
from core.counter_buffer import CounterBuffer
from core.database import Database
from core.sqlite import connect_sync


class Source:
    def __init__(self) -> None:
        self.n = 0


async def test_flushes_add_to_what_other_processes_wrote(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    try:
        buffer = CounterBuffer()
        await buffer.load(db)
        source = Source()
        buffer.track("vigil_turns", lambda: source.n)
        source.n = 3
        buffer.add("vigil_errors", 2, (("kind", "llm"),))
        other = connect_sync(db.path)  # the supervisor, the worker, the CLI
        counters.add_sync(other, "vigil_turns", 10)
        counters.add_sync(other, "vigil_restarts", 1, {"reason": "crash"})
        other.close()

        assert buffer.value("vigil_turns") == 3  # not flushed, not re-read yet
        assert await buffer.flush(db) == 2
        assert buffer.pending == {}
        assert buffer.value("vigil_turns") == 13
        assert buffer.value("vigil_restarts", (("reason", "crash"),)) == 1
        source.n = 5
        assert buffer.value("vigil_turns") == 15  # stored + unflushed
        await buffer.flush(db)
        stored = counters.read_all_sync(connect_sync(db.path))
        assert stored[("vigil_turns", "")] == 15
        assert stored[("vigil_errors", "kind=llm")] == 2
    finally:
        await db.close()


async def test_the_export_never_goes_down_and_a_rebuilt_source_counts_on(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    try:
        buffer = CounterBuffer()
        source = Source()
        buffer.track("vigil_llm_requests", lambda: source.n)
        source.n = 4
        await buffer.flush(db)
        assert buffer.value("vigil_llm_requests") == 4
        # The rows vanish under us (a replaced file): the export holds its floor.
        conn = connect_sync(db.path)
        conn.execute("DELETE FROM counters")
        conn.close()
        await buffer.load(db)
        assert buffer.value("vigil_llm_requests") == 4
        # The part was rebuilt and counts from 0: its new counts are added.
        source.n = 1
        await buffer.flush(db)
        assert buffer.value("vigil_llm_requests") == 4  # 1 stored, floor 4
        source.n = 2
        assert buffer.value("vigil_llm_requests") == 4
    finally:
        await db.close()


async def test_a_failed_flush_keeps_the_deltas(tmp_path: Path) -> None:
    db = Database(tmp_path / "system.db")
    await db.open()
    buffer = CounterBuffer()
    buffer.add("vigil_auth_failures", 3)
    await db.close()  # writes fail now
    assert await buffer.flush(db) == 0
    assert buffer.pending == {("vigil_auth_failures", ()): 3}
    assert buffer.flush_errors == 1
    db = Database(tmp_path / "system.db")
    await db.open()
    try:
        assert await buffer.flush(db) == 1
        assert buffer.value("vigil_auth_failures") == 3
    finally:
        await db.close()


def test_histogram_buckets_are_stored_per_bound() -> None:
    buffer = CounterBuffer()
    buckets = (0.1, 1.0, math.inf)
    for value in (0.05, 0.1, 0.5, 7.0):
        buffer.observe("vigil_x_seconds", value, buckets, (("route", "/a"),))
    values = buffer.values()
    assert values[("vigil_x_seconds_bucket", (("le", "0.1"), ("route", "/a")))] == 2
    assert values[("vigil_x_seconds_bucket", (("le", "1.0"), ("route", "/a")))] == 1
    assert values[("vigil_x_seconds_bucket", (("le", "+Inf"), ("route", "/a")))] == 1
    assert values[("vigil_x_seconds_count", (("route", "/a"),))] == 4
    assert values[("vigil_x_seconds_sum", (("route", "/a"),))] == 7.65
