"""``GET /usage`` (admin token): per-user and per-day token aggregates."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

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


@router.get("/usage/dashboard")
async def usage_dashboard(
    runtime: RuntimeDep,
    hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24,
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """Tokens per hour (every hour, 0 included) and the top users today (the dashboard)."""
    from core.budgets import Periods

    recorder = runtime.chat.usage
    await recorder.flush(runtime.db)
    now = time.time()
    first = (int(now) // 3600 - hours + 1) * 3600
    found = {h["hour"]: h for h in await usage.hourly_tokens(runtime.db, first)}
    series = [
        found.get(hour, {"hour": hour, "prompt": 0, "completion": 0})
        for hour in range(first, first + hours * 3600, 3600)
    ]
    budgets = runtime.chat.budgets
    today = Periods.at(now, budgets.tz if budgets is not None else None).day_start
    report = await usage.summary(runtime.db, since=today, prices=recorder.prices)
    return {
        "hours": series,
        "today_since": today,
        "today": report["total"],
        "top_users": report["users"][:top],
    }
