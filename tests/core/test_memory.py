"""ChatMemory: durable appends, cached windows rebuilt after a restart, safe search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.database import Database
from core.errors import NotFound
from core.memory import ChatMemory, fts_query


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "system.db")
    await database.open()
    yield database
    await database.close()


async def test_append_builds_window_and_counts(db: Database) -> None:
    memory = ChatMemory(db)
    await memory.append("local:a", "user", "hello")
    await memory.window("local:a")  # now cached
    await memory.append("local:a", "assistant", "hi there")
    window = await memory.window("local:a")
    assert [(t.role, t.content) for t in window.turns] == [
        ("user", "hello"),
        ("assistant", "hi there"),
    ]
    chat = await memory.chat("local:a")
    assert chat["message_count"] == 2
    assert chat["channel"] == "local"


async def test_window_is_rebuilt_from_disk_after_restart(tmp_path: Path) -> None:
    first = Database(tmp_path / "system.db")
    await first.open()
    memory = ChatMemory(first)
    for i in range(5):
        await memory.append("tg:42", "user" if i % 2 == 0 else "assistant", f"m{i}")
    await memory.fold("tg:42", upto_id=2, summary="- user: m0\n- assistant: m1")
    await first.close()

    second = Database(tmp_path / "system.db")
    await second.open()
    try:
        fresh = ChatMemory(second)
        window = await fresh.window("tg:42")
        assert [t.content for t in window.turns] == ["m2", "m3", "m4"]
        assert window.summary.startswith("- user: m0")
        assert fresh.cache_misses == 1
        await fresh.window("tg:42")
        assert fresh.cache_hits == 1
    finally:
        await second.close()


async def test_cache_is_bounded_lru(db: Database) -> None:
    memory = ChatMemory(db, cache_chats=2)
    for chat in ("local:a", "local:b", "local:c"):
        await memory.append(chat, "user", "x")
        await memory.window(chat)
    assert [w.chat_id for w in memory.cached_chats()] == ["local:b", "local:c"]
    window = await memory.window("local:a")  # evicted, rebuilt from SQLite
    assert [t.content for t in window.turns] == ["x"]


async def test_reset_clears_context_keeps_history(db: Database) -> None:
    memory = ChatMemory(db)
    await memory.append("local:r", "user", "secret plan")
    await memory.append("local:r", "assistant", "noted")
    await memory.reset("local:r")
    assert (await memory.window("local:r")).turns == []
    await memory.append("local:r", "user", "fresh start")
    assert [t.content for t in (await memory.window("local:r")).turns] == ["fresh start"]
    assert len(await memory.history("local:r")) == 3
    assert [h.turn.content for h in await memory.search("plan")] == ["secret plan"]


async def test_history_paging_and_role(db: Database) -> None:
    memory = ChatMemory(db)
    ids = [(await memory.append("local:h", "user", f"u{i}")).id for i in range(5)]
    page = await memory.history("local:h", limit=2)
    assert [t.id for t in page] == [ids[4], ids[3]]
    older = await memory.history("local:h", limit=10, before=page[-1].id)
    assert [t.id for t in older] == [ids[2], ids[1], ids[0]]
    assert await memory.history("local:h", role="assistant") == []
    with pytest.raises(ValueError, match="role"):
        await memory.history("local:h", role="robot")
    with pytest.raises(NotFound):
        await memory.chat("local:nobody")


@pytest.mark.parametrize(
    "query",
    [
        'unbalanced "quote',
        "NEAR(a b",
        "*",
        "col:value",
        "a AND OR NOT b",
        "'; DROP TABLE messages; --",
        "-minus ^caret",
        "\x00 nul",
        "",
        "   ",
    ],
)
async def test_search_accepts_any_text(db: Database, query: str) -> None:
    memory = ChatMemory(db)
    await memory.append("local:s", "user", "the table of contents")
    results = await memory.search(query)
    assert isinstance(results, list)
    assert await db.scalar("SELECT count(*) FROM messages") == 1


async def test_search_finds_words_and_filters_by_chat(db: Database) -> None:
    memory = ChatMemory(db)
    await memory.append("local:a", "user", "Deploy the café server on Friday")
    await memory.append("local:b", "user", "the server is down")
    hits = await memory.search("server")
    assert {h.turn.chat_id for h in hits} == {"local:a", "local:b"}
    assert [h.turn.chat_id for h in await memory.search("server", chat_id="local:b")] == ["local:b"]
    assert [h.turn.chat_id for h in await memory.search("cafe friday")] == ["local:a"]
    assert "[server]" in hits[0].snippet


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('say "hi" OR bye') == '"say" "hi" "OR" "bye"'
    assert fts_query("!!!") is None


async def test_idle_windows_leave_memory_but_not_the_database(db: Database) -> None:
    clock = [1000.0]
    memory = ChatMemory(db, clock=lambda: clock[0])
    await memory.append("local:idle", "user", "old")
    await memory.window("local:idle")
    clock[0] += 90_000
    await memory.append("local:busy", "user", "new")
    await memory.window("local:busy")
    assert memory.evict_idle(idle_s=86_400) == 1
    assert [w.chat_id for w in memory.cached_chats()] == ["local:busy"]
    assert [t.content for t in (await memory.window("local:idle")).turns] == ["old"]


async def test_search_ranks_the_newest_candidates_and_scopes_before_cutting(db: Database) -> None:
    memory = ChatMemory(db, search_candidates=5)
    await memory.append("local:old", "user", "the zebra crossing story")
    for i in range(20):
        await memory.append("local:busy", "user", f"story number {i}")
    common = await memory.search("story", limit=50)
    assert len(common) == 5  # only the newest 5 matches are ranked
    assert {h.turn.chat_id for h in common} == {"local:busy"}
    rare = await memory.search("zebra story")
    assert [h.turn.chat_id for h in rare] == ["local:old"]
    scoped = await memory.search("story", chat_id="local:old")
    assert [h.turn.content for h in scoped] == ["the zebra crossing story"]
    assert scoped[0].snippet == "the zebra crossing [story]"
