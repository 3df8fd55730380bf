"""``POST /admin/announce``: one message from the operator to every active chat.

Only the server holds the Telegram connection, so ``scripts/vigilctl announce``
comes here. Active chat: one whose chatter wrote within ``days`` (default 30).
Telegram chats get the note through the Telegram channel's
:class:`~core.edit_scheduler.EditScheduler` (the same send/edit budget as the
streamed replies, flood waits included), one chat after another; local chats
(there is nobody to push to) get it stored as an assistant message, seen in
their history and the web chat. The answer is a stream of JSON lines, one per
chat and a last ``done`` line with the summary; the sending goes on if the
client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from core.errors import EmptyText, TextTooLong, VigilError
from core.http import check_admin
from core.runtime import Runtime, RuntimeDep
from core.streaming import StreamingOptimizer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(check_admin)])
PREFIX = "📢 "
MAX_CHARS = 4000  # one Telegram message, with room for the prefix
DEFAULT_DAYS = 30.0


class AnnounceRunning(VigilError):
    code = "announce_running"
    status = 409


class AnnounceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    days: Annotated[float, Field(gt=0, le=3650)] = DEFAULT_DAYS
    dry_run: bool = False


async def active_chats(runtime: Runtime, days: float) -> list[str]:
    """Chats whose chatter wrote within ``days``, most recent first."""
    since = time.time() - days * 86400
    rows = await runtime.db.fetchall(
        "SELECT chat_id, max(created_at) AS last FROM messages"
        " WHERE created_at >= ? AND role = 'user' GROUP BY chat_id ORDER BY last DESC",
        (since,),
    )
    return [str(row["chat_id"]) for row in rows]


async def deliver(runtime: Runtime, chat_id: str, text: str) -> tuple[str, str]:
    """(outcome, detail) for one chat: sent, stored, skipped or failed."""
    note = PREFIX + text
    if chat_id.startswith("tg:"):
        channel, gateway = runtime.telegram_channel, runtime.telegram
        if channel is None or gateway is None:
            return "skipped", "telegram not configured"
        if gateway.state != "connected":
            return "skipped", f"telegram {gateway.state}"
        streamer = StreamingOptimizer(channel, chat_id)  # the channel's shared budget
        try:
            await streamer.finish(note)
        except VigilError as exc:
            return "failed", exc.code
        return "sent", ""
    await runtime.memory.append(chat_id, "assistant", note)
    return "stored", ""


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False) + "\n").encode()


async def _send_all(
    runtime: Runtime, chats: list[str], text: str, events: asyncio.Queue[dict[str, Any]]
) -> None:
    try:
        await _send_each(runtime, chats, text, events)
    except Exception:  # the task's boundary: the client gets one error line, never a hang
        log.exception("announce failed")
        error = {"code": "internal_error", "message": "see logs/system.log"}
        events.put_nowait({"event": "error", "error": error})


async def _send_each(
    runtime: Runtime, chats: list[str], text: str, events: asyncio.Queue[dict[str, Any]]
) -> None:
    started = time.monotonic()
    counts = {"sent": 0, "stored": 0, "skipped": 0, "failed": 0}
    failed: list[str] = []
    for done, chat_id in enumerate(chats, 1):
        try:
            outcome, detail = await deliver(runtime, chat_id, text)
        except Exception as exc:  # one chat's trouble must not stop the others
            log.warning("announce: %s failed: %s", chat_id, exc)
            outcome, detail = "failed", type(exc).__name__
        counts[outcome] += 1
        if outcome == "failed":
            failed.append(chat_id)
        events.put_nowait(
            {
                "event": "progress",
                "done": done,
                "total": len(chats),
                "chat_id": chat_id,
                "outcome": outcome,
                "detail": detail,
            }
        )
    summary = {
        "total": len(chats),
        **counts,
        "failed_chats": failed,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("announce: %s", summary)
    events.put_nowait({"event": "done", "summary": summary})


@router.post("/announce")
async def announce(request: Request, runtime: RuntimeDep, body: AnnounceIn) -> StreamingResponse:
    text = body.text.strip()
    if not text:
        raise EmptyText("text must not be empty")
    if len(text) > MAX_CHARS:
        raise TextTooLong(f"text is {len(text)} characters; the limit is {MAX_CHARS}")
    running: asyncio.Task[None] | None = getattr(request.app.state, "announce_task", None)
    if running is not None and not running.done():
        raise AnnounceRunning("an announcement is being sent; wait for it to finish")
    chats = await active_chats(runtime, body.days)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    log.info(
        "announce to %d chat(s) active within %g days%s",
        len(chats),
        body.days,
        " (dry run)" if body.dry_run else "",
    )
    if body.dry_run:
        summary = {"total": len(chats), "chats": chats, "dry_run": True}
        events.put_nowait({"event": "done", "summary": summary})
    else:
        task = asyncio.ensure_future(_send_all(runtime, chats, text, events))
        request.app.state.announce_task = task  # goes on if the client hangs up
    return StreamingResponse(_stream(events), media_type="application/x-ndjson")


async def _stream(events: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[bytes]:
    while True:
        event = await events.get()
        yield _line(event)
        if event["event"] in ("done", "error"):
            return
