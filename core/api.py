"""The local chat channel: chat with Vigil over HTTP, no Telegram needed.

``POST /api/chats/{chat_id}/messages`` answers with JSON holding the full
reply, or with ``text/event-stream`` when the request asks for it. The
message may carry images or an audio file (JSON data URLs or multipart, read
by ``core/uploads.py``); ``GET /api/chats/{chat_id}/images/{id}`` serves an
image back. The turn runs as its own task, so a client that hangs up
mid-stream loses nothing: the reply is still completed and stored. Every
route needs the admin token.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from core.channel import IncomingMessage, Turn, TurnResult, api_user
from core.chat import parse_command
from core.errors import (
    BadRequest,
    EmptyText,
    InvalidChatId,
    InvalidUser,
    NotFound,
    TextTooLong,
    VigilError,
)
from core.http import check_admin
from core.runtime import Runtime, RuntimeDep
from core.uploads import MESSAGE_BODY, MessageForm, read_message
from core.voice import TRANSCRIPT_MARK

MAX_SQL_INT = 2**63 - 1  # SQLite's INTEGER range; larger numbers are refused with a 422
CHAT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A full id as GET /api/chats lists it: "local:<id>" or "tg:<Telegram chat id>".
STORED_CHAT_ID_RE = re.compile(r"^(local:[A-Za-z0-9_.-]{1,64}|tg:-?[0-9]{1,20})$")
LOCAL_PREFIX = "local:"
MAX_USER_CHARS = 64

router = APIRouter(prefix="/api", tags=["local chat"], dependencies=[Depends(check_admin)])


class LocalReply:
    """A Channel for one HTTP request: collects messages, feeds an SSE queue."""

    name = "local"
    max_message_chars = 1_000_000

    def __init__(self, events: asyncio.Queue[tuple[str, Any]] | None = None) -> None:
        self.messages: list[str] = []
        self.events = events

    def edit_interval(self, chat_id: str) -> float:
        # Streaming clients see every token; a plain JSON reply needs no edits.
        return 0.0 if self.events is not None else float("inf")

    async def send(self, chat_id: str, text: str) -> str:
        self.messages.append(text)
        self._emit("delta", {"text": text})
        return str(len(self.messages) - 1)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        index = int(message_id)
        old = self.messages[index]
        self.messages[index] = text
        if text.startswith(old):
            self._emit("delta", {"text": text[len(old) :]})
        else:
            self._emit("replace", {"message": index, "text": text})

    async def typing(self, chat_id: str) -> None:
        self._emit("typing", {})

    def _emit(self, event: str, data: Any) -> None:
        if self.events is not None:
            self.events.put_nowait((event, data))

    @property
    def text(self) -> str:
        return "".join(self.messages)


def local_chat_id(chat_id: str) -> str:
    if not CHAT_ID_RE.match(chat_id):
        raise InvalidChatId(
            "chat id must be 1-64 characters of letters, digits, '_', '-' or '.'",
            chat_id=chat_id[:80],
        )
    return LOCAL_PREFIX + chat_id


def stored_chat_id(chat_id: str) -> str:
    """Any id ``GET /api/chats`` lists (``tg:777006``), or a local chat's own id."""
    if ":" not in chat_id:
        return local_chat_id(chat_id)
    if not STORED_CHAT_ID_RE.match(chat_id):
        raise InvalidChatId(
            "chat id must be a local id (1-64 characters of letters, digits, '_', '-' or '.') "
            "or a full id as GET /api/chats lists it, such as local:notes or tg:123456",
            chat_id=chat_id[:80],
        )
    return chat_id


ChatIdPath = Annotated[str, Path(description="1-64 of [A-Za-z0-9_.-]")]
ImageIdPath = Annotated[int, Path(ge=1, le=MAX_SQL_INT)]


def turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "role": turn.role,
        "content": turn.content,
        "tokens": turn.tokens,
        "created_at": turn.created_at,
        "author": turn.author,
    }


def result_json(chat_id: str, result: TurnResult) -> dict[str, Any]:
    return {
        "chat_id": chat_id,
        "reply": result.reply,
        "user_message_id": result.user_message_id,
        "reply_message_id": result.reply_message_id,
        "command": result.command,
        "error": {"code": result.error_code} if result.error_code else None,
        "model": result.model,
    } | ({"transcript": result.transcript} if result.transcript is not None else {})


def _validate_text(runtime: Runtime, form: MessageForm) -> str:
    """The message's text; it may be empty when images or audio come with it."""
    if form.text is None and not (form.images or form.audio):
        raise RequestValidationError([{"type": "missing", "loc": ("body", "text"), "msg": ""}])
    text = form.text or ""
    if not text.strip() and not (form.images or form.audio):
        raise EmptyText("text must not be empty (or send an image or audio with it)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "text is not valid Unicode (it holds an unpaired UTF-16 surrogate such as \\ud800)",
            field="text",
        ) from None
    limit = runtime.settings.max_message_chars
    if len(text) > limit:
        raise TextTooLong(
            f"text is {len(text)} characters; the limit is {limit} (VIGIL_MAX_MESSAGE_CHARS)",
            limit=limit,
        )
    if form.images and parse_command(text)[0] is not None:  # (an audio caption is never one)
        raise BadRequest("a command (text starting with '/') cannot carry images", field="text")
    return text


def validate_user(user: str | None) -> str | None:
    """The end user an integration speaks for: 1-64 printable characters, or None."""
    if user is None:
        return None
    if not 1 <= len(user) <= MAX_USER_CHARS or not user.strip():
        raise InvalidUser(
            f"user must be 1-{MAX_USER_CHARS} characters, not blank (got {len(user)})",
            field="user",
        )
    if not user.isprintable():
        raise InvalidUser(
            "user must hold printable characters only (no control characters or newlines)",
            field="user",
        )
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUser("user is not valid Unicode", field="user") from None
    return user


@router.post("/chats/{chat_id}/messages", openapi_extra=MESSAGE_BODY)
async def post_message(request: Request, runtime: RuntimeDep, chat_id: ChatIdPath) -> Any:
    full_id = local_chat_id(chat_id)
    form = await read_message(request, runtime.settings, runtime.uploads)
    text = _validate_text(runtime, form)
    user = validate_user(form.user)
    msg = IncomingMessage(
        chat_id=full_id,
        text=text,
        user_id=api_user(user),
        username=user,
        display_name=user,
        received_at=time.time(),
        images=form.images,
        audio=form.audio,
    )
    wants_stream = form.stream or "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        reply = LocalReply()
        result = await runtime.chat.handle(msg, reply)
        body_out = result_json(chat_id, result)
        # Said besides the reply (a budget heads-up, a fresh-context note): the
        # streamed form sends them as deltas; a JSON client gets them here.
        notices = [
            m
            for i, m in enumerate(reply.messages)
            if str(i) not in result.sent_ids
            and not (result.transcript is not None and m.startswith(TRANSCRIPT_MARK))
        ]
        if notices and result.command is None:
            body_out["notices"] = notices
        if msg.images and result.user_message_id is not None:
            found = await images_of(runtime, [result.user_message_id], chat_id)
            body_out["images"] = found.get(result.user_message_id, [])
        return body_out
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    channel = LocalReply(events)
    # Refused with 429/503 here, before the stream starts (not as an event in a 200 stream).
    # Rate limit, budgets (not commands), and a chat whose model cannot see an image.
    await runtime.chat.admit_user(msg, channel)
    task = runtime.chat.handle_in_background(msg, channel, admitted=True)
    return StreamingResponse(
        _sse(chat_id, task, events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    chat_id: str, task: asyncio.Future[TurnResult], events: asyncio.Queue[tuple[str, Any]]
) -> AsyncIterator[str]:
    while True:
        getter = asyncio.ensure_future(events.get())
        waiters: set[asyncio.Future[Any]] = {getter, task}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            event, data = getter.result()
            yield f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
            continue
        getter.cancel()
        while not events.empty():
            event, data = events.get_nowait()
            yield f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        break
    error = task.exception()
    if isinstance(error, VigilError):
        yield f"event: error\ndata: {json.dumps({'error': error.to_dict()})}\n\n"
    elif error is not None:
        payload = {"error": {"code": "internal_error", "message": "see logs/system.log"}}
        yield f"event: error\ndata: {json.dumps(payload)}\n\n"
    else:
        yield f"event: done\ndata: {json.dumps(result_json(chat_id, task.result()))}\n\n"


@router.get("/chats/{chat_id}/messages")
async def get_messages(
    runtime: RuntimeDep,
    chat_id: ChatIdPath,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_SQL_INT)] = None,
    role: Annotated[str | None, Query(pattern="^(user|assistant|system)$")] = None,
) -> dict[str, Any]:
    memory = runtime.memory
    full_id = stored_chat_id(chat_id)
    chat = await memory.chat(full_id)
    turns = await memory.history(full_id, limit=limit, before=before, role=role)
    images = await images_of(runtime, [t.id for t in turns if t.images], chat_id)
    return {
        "chat_id": chat_id,
        "message_count": chat["message_count"],
        "messages": [{**turn_json(t), "images": images.get(t.id, [])} for t in turns],
        "next_before": turns[-1].id if len(turns) == limit else None,
    }


async def images_of(
    runtime: Runtime, message_ids: list[int], chat_id: str
) -> dict[int, list[dict[str, Any]]]:
    """Each message's images as the API lists them (``url``: the route below)."""
    found: dict[int, list[dict[str, Any]]] = {}
    if not message_ids:
        return found
    marks = ",".join("?" * len(message_ids))
    rows = await runtime.db.fetchall(
        "SELECT id, message_id, mime, bytes, width, height FROM message_images"
        f" WHERE message_id IN ({marks}) ORDER BY id",
        message_ids,
    )
    for row in rows:
        found.setdefault(row["message_id"], []).append(
            {
                "id": row["id"],
                "url": f"/api/chats/{chat_id}/images/{row['id']}",
                "mime": row["mime"],
                "width": row["width"],
                "height": row["height"],
                "bytes": row["bytes"],
            }
        )
    return found


@router.get(
    "/chats/{chat_id}/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def get_image(runtime: RuntimeDep, chat_id: ChatIdPath, image_id: ImageIdPath) -> Response:
    """An image stored with a message of this chat (the bytes Vigil re-encoded)."""
    full_id = stored_chat_id(chat_id)
    row = await runtime.db.fetchone(
        "SELECT path, mime FROM message_images WHERE id = ? AND chat_id = ?", (image_id, full_id)
    )
    if row is None:
        raise NotFound(f"chat {chat_id} has no image {image_id}", image_id=image_id)
    media = runtime.chat.media
    data = None if media is None else await asyncio.to_thread(media.read, row["path"])
    if data is None:
        raise NotFound(
            f"the file of image {image_id} is gone (deleted, or not restored from a backup)",
            image_id=image_id,
        )
    return Response(
        data,
        media_type=row["mime"],
        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.delete("/chats/{chat_id}/context")
async def reset_context(runtime: RuntimeDep, chat_id: ChatIdPath) -> dict[str, Any]:
    full_id = stored_chat_id(chat_id)
    chat = await runtime.memory.chat(full_id)
    await runtime.chat.reset(full_id)  # waits for a turn running in this chat
    return {"chat_id": chat_id, "reset": True, "history_kept": chat["message_count"]}


@router.get("/chats")
async def list_chats(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_SQL_INT)] = 0,
) -> dict[str, Any]:
    chats = await runtime.memory.chats(limit=limit, offset=offset)
    return {"chats": chats}


@router.get("/search")
async def search(
    runtime: RuntimeDep,
    q: Annotated[str, Query(min_length=1, max_length=500)],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    hits = await runtime.memory.search(q, limit=limit)
    return {
        "query": q,
        "results": [
            {**turn_json(h.turn), "chat_id": h.turn.chat_id, "snippet": h.snippet} for h in hits
        ],
    }
