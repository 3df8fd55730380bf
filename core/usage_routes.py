"""``GET /usage`` (admin token): per-user and per-day token aggregates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from core import usage
from core.api import stored_chat_id
from core.errors import BadRequest, InvalidChatId
from core.http import check_admin
from core.runtime import RuntimeDep

router = APIRouter(tags=["usage"], dependencies=[Depends(check_admin)])


@router.get("/usage")
async def get_usage(
    runtime: RuntimeDep,
    since: str | None = None,
    user: str | None = None,
    chat: str | None = None,
) -> dict[str, Any]:
    try:
        start = usage.parse_since(since)
    except ValueError as exc:
        raise BadRequest(str(exc), field="since") from None
    try:
        who = usage.check_user(user)
    except ValueError as exc:
        raise BadRequest(str(exc), field="user") from None
    try:
        chat_id = None if chat is None else stored_chat_id(chat)
    except InvalidChatId as exc:
        raise BadRequest(exc.message, field="chat") from None
    recorder = runtime.chat.usage
    await recorder.flush(runtime.db)  # what is counted is what is shown
    return await usage.summary(
        runtime.db, since=start, user=who, chat=chat_id, prices=recorder.prices
    )
