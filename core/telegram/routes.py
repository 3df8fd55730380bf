"""``GET /telegram/status``: the truth about the Telegram connection (read-only, open)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from core.runtime import Runtime, RuntimeDep

router = APIRouter(tags=["telegram"])


def telegram_status(runtime: Runtime) -> dict[str, Any]:
    gateway = runtime.telegram
    if gateway is None:
        return {
            "state": "not_configured",
            "account": None,
            "initialized": False,
            "detail": "set VIGIL_TELEGRAM_API_ID and VIGIL_TELEGRAM_API_HASH (docs/telegram.md)",
        }
    body: dict[str, Any] = gateway.status()
    bot = runtime.telegram_bot
    channel = runtime.telegram_channel
    if bot is not None:
        body["chats"] = {
            "ignored_group_messages": bot.ignored,
            "refused_users": bot.refused_count,
            "replayed_updates": bot.replayed,
            "stale_messages": bot.stale,
            "resumed_turns": bot.resumed,
            "joined_pastes": bot.paste.joined,
            "turns_in_flight": len(bot._tasks),
        }
        body["media"] = {
            "turns": bot.media_turns,
            "refused": bot.media_refused,
            "downloads": gateway.downloads,
            "downloaded_bytes": gateway.downloaded_bytes,
        }
    if channel is not None:
        scheduler = channel.scheduler
        body["streaming"] = {
            "active_streams": scheduler.active_streams,
            "calls": scheduler.calls,
            "deferred_updates": scheduler.deferred,
            "global_edits_per_s": scheduler.rate,
            "skipped_identical_edits": channel.skipped_identical,
            "plain_text_fallbacks": channel.plain_fallbacks,
        }
    return body


@router.get("/telegram/status")
async def status(runtime: RuntimeDep) -> dict[str, Any]:
    return telegram_status(runtime)
