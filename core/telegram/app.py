"""Telegram's place in the app lifespan: one starter.

:func:`telegram_starter` returns the starter for ``core/app.py``. It starts
the gateway when Telegram is configured or when a client (or a client
factory) was injected with ``create_app(telegram=...)`` — that is how tests
run the full app against ``tests/fake_telegram.FakeTelegram``. Without
either, ``runtime.telegram`` stays ``None`` and ``/health`` says
``not_configured``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from core.config import Settings
from core.streaming import EditScheduler
from core.telegram.session import SessionLock, check_session_server, server_profile

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)


def _client_factory(settings: Settings, injected: Any, profile: Any) -> Any:
    """What builds a (fresh) client; None when a ready client was injected."""
    if injected is None:
        from core.telegram.client import make_client

        return lambda: make_client(settings, profile)
    if hasattr(injected, "send_message"):
        return None  # a ready client (FakeTelegram): it reconnects, never replaced
    return lambda: injected(settings, profile)


def telegram_starter(injected: Any = None) -> Any:
    """The starter for ``_default_starters``; ``injected`` is a client or factory."""

    async def start(app: FastAPI, runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
        settings: Settings = runtime.settings
        if injected is None and not settings.telegram_configured:
            log.info("Telegram not configured; the local chat channel still works")
            return
        from core.telegram.bot import REFUSALS_REMEMBERED, TelegramBot
        from core.telegram.channel import TelegramChannel
        from core.telegram.gateway import TelegramGateway
        from core.telegram.ledger import InboundLedger, RefusalMemory
        from core.telegram.media import MediaLimits

        profile = server_profile(settings)  # ConfigError: one line naming the variable
        check_session_server(settings.session_path, profile)
        lock = SessionLock(settings.session_path)
        lock.acquire("the Vigil server")
        stack.callback(lock.release)
        factory = _client_factory(settings, injected, profile)
        gateway = TelegramGateway(
            settings,
            injected if factory is None else factory(),
            profile=profile,
            factory=factory,
        )
        refusals = RefusalMemory(runtime.db, limit=REFUSALS_REMEMBERED)
        await refusals.load()
        scheduler = EditScheduler(edits_per_s=settings.telegram_global_edits_per_s)
        channel = TelegramChannel(
            gateway,
            scheduler=scheduler,
            private_interval_s=settings.telegram_edit_interval_private_s,
            group_interval_s=settings.telegram_edit_interval_group_s,
        )
        bot = TelegramBot(
            runtime.chat,
            channel,
            allowed_users=settings.telegram_allowed_users,
            admin_id=settings.telegram_admin_id,
            debounce_s=settings.telegram_paste_debounce_s,
            max_message_chars=settings.max_message_chars,
            account=gateway,
            ledger=InboundLedger(runtime.db),
            refusals=refusals,
            catch_up_max_age_s=settings.telegram_catch_up_max_age_s,
            media_source=gateway,
            media_limits=MediaLimits.from_settings(settings),
        )
        gateway.on_message = bot.on_message
        gateway.on_connected = bot.on_connected
        runtime.telegram = gateway
        runtime.telegram_bot, runtime.telegram_channel = bot, channel
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        stack.push_async_callback(bot.stop)  # runs first: turns finish, then disconnect

    return start
