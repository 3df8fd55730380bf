"""The Telegram inbound ledger: every incoming message stored before its turn runs.

Telethon-free. A message is keyed by (chat, Telegram message id) and stored
``pending`` before anything is done with it; its outcome settles it
(``answered``, ``ignored``, ``refused``, ``stale``). So:

- a replayed update (Telethon's catch-up after a restart replays from the last
  saved update state) finds its key and is not answered again;
- a message whose turn was cut short (a crash, a forced stop) is still
  ``pending`` and is answered at the next start, once;
- a message older than ``VIGIL_TELEGRAM_CATCH_UP_MAX_AGE_S`` when it arrives
  is stored ``stale`` and not answered.

The text of a message that was not for us (``ignored``, ``refused``) is
dropped when it is settled. Settled rows are pruned after ``KEEP_SETTLED_S``
(at every connect); the strangers already
refused are kept here too (bounded), so a restart does not refuse them again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from core.database import Database
from core.telegram.rules import TgMedia, TgMessage

log = logging.getLogger(__name__)

SETTLED = ("answered", "ignored", "refused", "stale")
KEEP_SETTLED_S = 30 * 86400.0  # far beyond any update Telegram would replay


def _payload(msg: TgMessage) -> str:
    return json.dumps(dataclasses.asdict(msg), ensure_ascii=False)


def _message(payload: str) -> TgMessage:
    data: dict[str, Any] = json.loads(payload)
    data["part_ids"] = tuple(data.get("part_ids") or ())
    media = data.get("media")
    data["media"] = TgMedia(**media) if isinstance(media, dict) else None
    return TgMessage(**data)


class InboundLedger:
    """(chat, message id) -> what became of the message; committed before acting on it."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def admit(self, msg: TgMessage) -> bool:
        """Store ``msg`` as pending; False if it was seen before (a replayed update)."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO telegram_inbound"
                " (chat_id, message_id, sender_id, sent_at, received_at, status, payload)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)"
                " ON CONFLICT (chat_id, message_id) DO NOTHING",
                (
                    msg.chat_id,
                    msg.message_id,
                    msg.sender_id,
                    msg.date,
                    self.clock(),
                    _payload(msg),
                ),
            )
            return cursor.rowcount > 0

    async def settle(self, msg: TgMessage, status: str) -> None:
        """Record the outcome of ``msg`` (and of every paste piece joined into it)."""
        if status not in SETTLED:
            raise ValueError(f"status must be one of {SETTLED}")
        ids = (msg.message_id, *msg.part_ids)
        async with self.db.transaction() as conn:
            # What was not for us (a group's chatter, a stranger) is not kept.
            await conn.executemany(
                "UPDATE telegram_inbound SET status = ?, settled_at = ?,"
                " payload = CASE WHEN ? IN ('ignored', 'refused') THEN '' ELSE payload END"
                " WHERE chat_id = ? AND message_id = ? AND status = 'pending'",
                [(status, self.clock(), status, msg.chat_id, mid) for mid in ids],
            )

    async def pending(self) -> list[TgMessage]:
        """Messages stored but never settled (their turn was cut short), oldest first."""
        rows = await self.db.fetchall(
            "SELECT payload FROM telegram_inbound WHERE status = 'pending'"
            " ORDER BY received_at, message_id"
        )
        return [_message(row["payload"]) for row in rows]

    async def is_answered_in_history(self, msg: TgMessage) -> bool:
        """The turn got as far as storing a reply (only the settling was lost)."""
        row = await self.db.fetchone(
            "SELECT 1 FROM messages u JOIN messages a"
            " ON a.chat_id = u.chat_id AND a.id > u.id AND a.role = 'assistant'"
            " WHERE u.chat_id = ? AND u.external_id = ? AND u.role = 'user' LIMIT 1",
            (f"tg:{msg.chat_id}", str(msg.message_id)),
        )
        return row is not None

    async def prune(self) -> int:
        cutoff = self.clock() - KEEP_SETTLED_S
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "DELETE FROM telegram_inbound WHERE status != 'pending' AND received_at < ?",
                (cutoff,),
            )
            return int(cursor.rowcount)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT status, count(*) AS n FROM telegram_inbound GROUP BY status"
        )
        return {row["status"]: int(row["n"]) for row in rows}


class RefusalMemory:
    """The strangers already refused once per chat, persisted and bounded (oldest forgotten)."""

    def __init__(self, db: Database, *, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.limit = limit
        self.clock = clock
        self.size = 0  # rows stored, kept for the (synchronous) status endpoint

    async def load(self) -> None:
        self.size = int(await self.db.scalar("SELECT count(*) FROM telegram_refusals") or 0)

    async def add(self, chat_id: int, user_id: int | None) -> bool:
        """Remember the pair; True if it is new (the stranger is told once)."""
        if user_id is None:
            return False
        async with self.db.transaction() as conn:
            seen = await conn.execute_fetchall(
                "SELECT 1 FROM telegram_refusals WHERE chat_id = ? AND user_id = ?",
                (chat_id, user_id),
            )
            await conn.execute(
                "INSERT INTO telegram_refusals (chat_id, user_id, refused_at) VALUES (?, ?, ?)"
                " ON CONFLICT (chat_id, user_id) DO UPDATE SET refused_at = excluded.refused_at",
                (chat_id, user_id, self.clock()),
            )
            if not seen:
                await conn.execute(
                    "DELETE FROM telegram_refusals WHERE (chat_id, user_id) IN ("
                    " SELECT chat_id, user_id FROM telegram_refusals ORDER BY refused_at"
                    " LIMIT max(0, (SELECT count(*) FROM telegram_refusals) - ?))",
                    (self.limit,),
                )
            rows = await conn.execute_fetchall("SELECT count(*) FROM telegram_refusals")
            self.size = int(rows[0][0])
        return not seen
