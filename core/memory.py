"""ChatMemory: every chat's messages in SQLite, context windows cached in memory.

``append`` commits before it returns, so a reply never starts on a message that
a crash could lose. A chat's *window* is the part of its history still in the
context (after the last reset and after what was folded into the running
summary); active chats' windows are kept in a bounded LRU cache and rebuilt
from the database on a miss, e.g. after a restart.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.channel import Turn
from core.database import Database
from core.errors import NotFound
from core.media import StoredImage

ROLES = ("user", "assistant", "system")
_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Default token estimate: ~4 characters a token, no model needed."""
    return max(1, (len(text) + 3) // 4)


@dataclass(slots=True)
class ChatWindow:
    """The in-context part of one chat (mutable, owned by ChatMemory)."""

    chat_id: str
    summary: str = ""
    summary_upto_id: int = 0
    context_start_id: int = 0
    turns: list[Turn] = field(default_factory=list)
    last_active: float = 0.0
    unrefined: int = 0  # turns folded since the model last rewrote the summary

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.turns)

    @property
    def detached(self) -> bool:
        """The summary is from before an idle restart of the context (not in the prompt)."""
        return bool(self.summary) and self.context_start_id > self.summary_upto_id + 1

    @property
    def live_summary(self) -> str:
        """The summary the prompt carries ("" after an idle restart, until the next fold)."""
        return "" if self.detached else self.summary


@dataclass(frozen=True, slots=True)
class SearchHit:
    turn: Turn
    snippet: str
    rank: float


SEARCH_CANDIDATES = 1000


def snippet(content: str, words: list[str], *, width: int = 80) -> str:
    """``content`` around the first query word, that word in [brackets]."""
    flat = " ".join(content.split())
    pattern = "|".join(re.escape(w) for w in words if w)
    found = re.search(rf"\b({pattern})", flat, re.IGNORECASE) if pattern else None
    if found is None:
        return flat[:width] + ("…" if len(flat) > width else "")
    start = max(0, found.start() - width // 2)
    end = min(len(flat), found.end() + width // 2)
    text = flat[start : found.start()] + f"[{found.group(0)}]" + flat[found.end() : end]
    return ("…" if start else "") + text + ("…" if end < len(flat) else "")


def fts_query(text: str) -> str | None:
    """Turn any user text into a safe FTS5 query: every word quoted, ANDed."""
    words = _TOKEN_RE.findall(text)
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"' for w in words[:32])


def _turn(row: sqlite3.Row) -> Turn:
    return Turn(
        id=row["id"],
        chat_id=row["chat_id"],
        role=row["role"],
        content=row["content"],
        tokens=row["tokens"],
        created_at=row["created_at"],
        author=row["author"],
        external_id=row["external_id"],
    )


_TURN_COLUMNS = "id, chat_id, role, content, tokens, created_at, author, external_id"
_IMAGE_COLUMNS = "message_id, path, width, height, caption, mime, bytes"
_IN_CHUNK = 500  # ids per "IN (...)" (SQLite allows 32766 parameters; keep it small)


def _image_query(ids: Sequence[int]) -> tuple[str, list[int]]:
    marks = ",".join("?" * len(ids))
    return (
        f"SELECT {_IMAGE_COLUMNS} FROM message_images WHERE message_id IN ({marks}) ORDER BY id",
        list(ids),
    )


def _with_images(turns: list[Turn], rows: Sequence[sqlite3.Row]) -> list[Turn]:
    found: dict[int, list[StoredImage]] = {}
    for r in rows:
        found.setdefault(r["message_id"], []).append(
            StoredImage(r["path"], r["width"], r["height"], r["caption"], r["mime"], r["bytes"])
        )
    if not found:
        return turns
    return [replace(t, images=tuple(found[t.id])) if t.id in found else t for t in turns]


class ChatMemory:
    """Chats and messages; the one place that reads and writes them."""

    def __init__(
        self,
        db: Database,
        *,
        cache_chats: int = 1000,
        window_load_limit: int = 200,
        search_candidates: int = SEARCH_CANDIDATES,
        estimator: Callable[[str], int] = estimate_tokens,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.cache_chats = cache_chats
        self.window_load_limit = window_load_limit
        self.search_candidates = search_candidates
        self.estimate = estimator
        self.clock = clock
        self._windows: OrderedDict[str, ChatWindow] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # --- writes ---------------------------------------------------------------
    async def append(
        self,
        chat_id: str,
        role: str,
        content: str,
        *,
        author: str | None = None,
        external_id: str | None = None,
        tokens: int | None = None,
        images: Sequence[StoredImage] = (),
    ) -> Turn:
        """Store one message (committed on return) and add it to the window.

        ``images``: files already written to the media store; their rows are
        committed in the same transaction as the message.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        now = self.clock()
        count = self.estimate(content) if tokens is None else tokens
        insert = (
            "INSERT INTO messages (chat_id, role, content, tokens, created_at, author, external_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        values = (chat_id, role, content, count, now, author, external_id)
        if not images:
            rowid = await self.db.write(insert, values)
        else:
            async with self.db.transaction() as conn:
                cursor = await conn.execute(insert, values)
                rowid = int(cursor.lastrowid or 0)
                await conn.executemany(
                    "INSERT INTO message_images (message_id, chat_id, path, mime, bytes, width,"
                    " height, caption, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (rowid, chat_id, i.path, i.mime, i.bytes, i.width, i.height, i.caption, now)
                        for i in images
                    ],
                )
        turn = Turn(rowid, chat_id, role, content, count, now, author, external_id, tuple(images))
        window = self._windows.get(chat_id)
        if window is not None:
            window.turns.append(turn)
            window.last_active = now
            self._windows.move_to_end(chat_id)
        return turn

    async def find_external(self, chat_id: str, external_id: str) -> Turn | None:
        """The user message a channel delivered with this id (None: not stored yet)."""
        row = await self.db.fetchone(
            f"SELECT {_TURN_COLUMNS} FROM messages"
            " WHERE chat_id = ? AND external_id = ? AND role = 'user' ORDER BY id DESC LIMIT 1",
            (chat_id, external_id),
        )
        return None if row is None else _turn(row)

    async def fold(self, chat_id: str, *, upto_id: int, summary: str) -> None:
        """Record that turns up to ``upto_id`` now live in ``summary``."""
        await self.db.write(
            "UPDATE chats SET summary = ?, summary_upto_id = ?"
            " WHERE id = ? AND summary_upto_id <= ?",
            (summary, upto_id, chat_id, upto_id),
        )
        window = self._windows.get(chat_id)
        if window is not None and window.summary_upto_id <= upto_id:
            window.summary = summary
            window.summary_upto_id = upto_id
            window.turns = [t for t in window.turns if t.id > upto_id]

    def sync_summary(self, window: ChatWindow) -> None:
        """Adopt the stored summary if another process (the worker) refined it."""
        rows = self.db.read_now(
            "SELECT summary, summary_upto_id FROM chats WHERE id = ?", (window.chat_id,)
        )
        if rows and rows[0]["summary_upto_id"] == window.summary_upto_id:
            window.summary = rows[0]["summary"]

    async def replace_summary(self, chat_id: str, *, upto_id: int, summary: str) -> bool:
        """Swap in a better summary only if nothing was folded meanwhile."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE chats SET summary = ? WHERE id = ? AND summary_upto_id = ?",
                (summary, chat_id, upto_id),
            )
            changed = cursor.rowcount > 0
        window = self._windows.get(chat_id)
        if changed and window is not None and window.summary_upto_id == upto_id:
            window.summary = summary
        return changed

    async def reset(self, chat_id: str) -> int:
        """Forget the context (and summary) of a chat; history stays searchable."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = ?", (chat_id,)
            )
            row = await cursor.fetchone()
            last = int(row[0]) if row else 0
            await conn.execute(
                "UPDATE chats SET context_start_id = ?, summary = '', summary_upto_id = ?"
                " WHERE id = ?",
                (last + 1, last, chat_id),
            )
        self._windows.pop(chat_id, None)
        return last

    async def chosen_model(self, chat_id: str) -> str | None:
        """The model profile this chat picked with ``/model`` (None: the default)."""
        row = await self.db.fetchone("SELECT model FROM chats WHERE id = ?", (chat_id,))
        return None if row is None else row[0]

    async def choose_model(self, chat_id: str, name: str | None) -> None:
        """Store the chat's model profile (the chat row may not exist yet)."""
        now = self.clock()
        channel = chat_id.split(":", 1)[0] if ":" in chat_id else "local"
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT OR IGNORE INTO chats (id, channel, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (chat_id, channel, now, now),
            )
            await conn.execute("UPDATE chats SET model = ? WHERE id = ?", (name, chat_id))

    async def restart_context(self, chat_id: str) -> int:
        """A fresh context after a long idle: unlike :meth:`reset` the summary stays
        (``/summary`` shows it), but the prompt no longer carries it."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = ?", (chat_id,)
            )
            row = await cursor.fetchone()
            last = int(row[0]) if row else 0
            await conn.execute(
                "UPDATE chats SET context_start_id = ? WHERE id = ?", (last + 1, chat_id)
            )
        self._windows.pop(chat_id, None)
        return last

    # --- windows --------------------------------------------------------------
    async def window(self, chat_id: str) -> ChatWindow:
        """The chat's in-context turns, from the cache or rebuilt from SQLite."""
        window = self._windows.get(chat_id)
        if window is not None:
            self.cache_hits += 1
            self._windows.move_to_end(chat_id)
            return window
        self.cache_misses += 1
        window = await self._load_window(chat_id)
        self._windows[chat_id] = window
        while len(self._windows) > self.cache_chats:
            self._windows.popitem(last=False)
        return window

    async def _load_window(self, chat_id: str) -> ChatWindow:
        found = self.db.read_now(
            "SELECT summary, summary_upto_id, context_start_id, updated_at FROM chats WHERE id = ?",
            (chat_id,),
        )
        if not found:
            return ChatWindow(chat_id, last_active=self.clock())
        chat = found[0]
        floor = max(chat["summary_upto_id"] + 1, chat["context_start_id"])
        rows = self.db.read_now(
            f"SELECT {_TURN_COLUMNS} FROM messages WHERE chat_id = ? AND id >= ?"
            " ORDER BY id DESC LIMIT ?",
            (chat_id, floor, self.window_load_limit),
        )
        turns = [_turn(r) for r in reversed(rows)]
        images: list[sqlite3.Row] = []
        for start in range(0, len(turns), _IN_CHUNK):
            chunk = [t.id for t in turns[start : start + _IN_CHUNK]]
            images += self.db.read_now(*_image_query(chunk))
        return ChatWindow(
            chat_id,
            summary=chat["summary"],
            summary_upto_id=chat["summary_upto_id"],
            context_start_id=chat["context_start_id"],
            turns=_with_images(turns, images),
            last_active=chat["updated_at"],
        )

    def cached_chats(self) -> list[ChatWindow]:
        return list(self._windows.values())

    def evict(self, chat_id: str) -> bool:
        return self._windows.pop(chat_id, None) is not None

    def evict_idle(self, *, idle_s: float, now: float | None = None) -> int:
        """Drop cached windows idle longer than ``idle_s`` (history stays in SQLite)."""
        cutoff = (self.clock() if now is None else now) - idle_s
        idle = [cid for cid, w in self._windows.items() if w.last_active < cutoff]
        for cid in idle:
            del self._windows[cid]
        return len(idle)

    def trim_cache(self, keep: int) -> int:
        """Keep only the ``keep`` most recently used windows; returns how many left."""
        dropped = 0
        while len(self._windows) > max(0, keep):
            self._windows.popitem(last=False)
            dropped += 1
        return dropped

    def active_chats(self, *, within_s: float, now: float | None = None) -> int:
        cutoff = (self.clock() if now is None else now) - within_s
        return sum(1 for w in self._windows.values() if w.last_active >= cutoff)

    def touch(self, chat_id: str) -> None:
        window = self._windows.get(chat_id)
        if window is not None:
            window.last_active = self.clock()

    # --- reads ----------------------------------------------------------------
    async def chat(self, chat_id: str) -> dict[str, Any]:
        row = await self.db.fetchone("SELECT * FROM chats WHERE id = ?", (chat_id,))
        if row is None:
            raise NotFound(f"no chat with id {chat_id!r}", chat_id=chat_id)
        return dict(row)

    async def chats(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT id, channel, title, created_at, updated_at, message_count FROM chats"
            " ORDER BY updated_at DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [dict(r) for r in rows]

    async def history(
        self,
        chat_id: str,
        *,
        limit: int = 50,
        before: int | None = None,
        role: str | None = None,
    ) -> list[Turn]:
        """Newest-first page of a chat's messages (``before`` = message id cursor)."""
        sql = f"SELECT {_TURN_COLUMNS} FROM messages WHERE chat_id = ?"
        params: list[Any] = [chat_id]
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        if role is not None:
            if role not in ROLES:
                raise ValueError(f"role must be one of {', '.join(ROLES)}")
            sql += " AND role = ?"
            params.append(role)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return await self.attach_images([_turn(r) for r in await self.db.fetchall(sql, params)])

    async def attach_images(self, turns: list[Turn]) -> list[Turn]:
        """The same turns, each with the images stored with it."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(turns), _IN_CHUNK):
            rows += await self.db.fetchall(
                *_image_query([t.id for t in turns[start : start + _IN_CHUNK]])
            )
        return _with_images(turns, rows)

    async def search(
        self, query: str, *, limit: int = 20, chat_id: str | None = None
    ) -> list[SearchHit]:
        """Full-text search; any text is safe (quoted words, no FTS syntax).

        bm25 ranks the newest ``search_candidates`` matches only: ranking every
        match of a common word costs seconds at a million messages, and chat
        history is searched for recent things. Rarer words have fewer matches
        and are ranked in full. The highlight is cut in Python (FTS5's
        ``snippet()`` re-runs the match per row).
        """
        match = fts_query(query)
        if match is None:
            return []
        columns = ", ".join("m." + c.strip() for c in _TURN_COLUMNS.split(","))
        scope = "JOIN messages c ON c.id = f.rowid AND c.chat_id = ?" if chat_id else ""
        params: list[Any] = ([chat_id] if chat_id else []) + [match, self.search_candidates, limit]
        rows = await self.db.fetchall(
            f"WITH newest AS (SELECT f.rowid AS id, f.rank AS rank FROM messages_fts f {scope}"
            " WHERE messages_fts MATCH ? ORDER BY f.rowid DESC LIMIT ?)"
            f" SELECT {columns}, newest.rank AS rank FROM newest"
            " JOIN messages m ON m.id = newest.id ORDER BY newest.rank LIMIT ?",
            params,
        )
        words = _TOKEN_RE.findall(query)
        return [SearchHit(_turn(r), snippet(r["content"], words), float(r["rank"])) for r in rows]

    async def last_turn(self, chat_id: str, role: str) -> Turn | None:
        rows = await self.history(chat_id, limit=1, role=role)
        return rows[0] if rows else None

    async def delete_message(self, message_id: int) -> None:
        await self.db.write("DELETE FROM messages WHERE id = ?", (message_id,))
        for window in self._windows.values():
            window.turns = [t for t in window.turns if t.id != message_id]
