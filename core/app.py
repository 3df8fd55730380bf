"""The composition root: ``create_app`` builds Vigil and its lifespan.

The lifespan opens resources in a fixed order (database -> LLM client ->
chat pipeline -> Telegram -> monitoring) on an ``AsyncExitStack`` and closes
them in reverse. Nothing connects or starts a task at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from core import (
    __version__,
    announce,
    api,
    health,
    lifecycle,
    restart_routes,
    usage_routes,
    web,
)
from core.admission import AdjustableLimiter, Admission
from core.budgets import Budgets, RateLimiter
from core.chat import ChatService
from core.config import Settings, load_settings
from core.context import ContextWindowManager
from core.database import Database
from core.files import write_private
from core.http import BodyGuard, TrustedHosts, install_error_handlers, trusted_host_patterns
from core.llm import LLMClient, llm_from_settings
from core.media import MediaStore
from core.memory import ChatMemory
from core.metering import RequestMeter, start_metering
from core.models import Models
from core.runtime import QueueDepth, Runtime
from core.sdnotify import SdNotifier
from core.stt import SpeechToText
from core.telegram import routes as telegram_routes
from core.usage import UsageRecorder, prices_from

log = logging.getLogger(__name__)


def resolve_admin_token(settings: Settings) -> str:
    """The configured token, else one generated once into ``data/admin_token``."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        return settings.admin_token.get_secret_value()
    path: Path = settings.admin_token_file
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    log.info("generated an admin token in %s (set VIGIL_ADMIN_TOKEN to choose one)", path)
    return token


async def _probe_loop(models: Models, interval: float, stt: SpeechToText | None = None) -> None:
    while True:
        try:
            await models.probe_all()
            for name, client in models.clients.items():
                log.debug("LLM probe %s: %s %s", name, client.status.state, client.status.detail)
            if stt is not None:  # /health's checks.stt recovers without a voice note
                await stt.probe()
        except Exception:  # loop boundary
            log.exception("LLM probe failed")
        await asyncio.sleep(interval)


def build_runtime(
    settings: Settings,
    db: Database,
    llm: LLMClient,
    *,
    exit_hook: Callable[[int], None] | None = None,
    notifier: SdNotifier | None = None,
    queue_depth: QueueDepth | None = None,
    models: Models | None = None,
    stt: SpeechToText | None = None,
) -> Runtime:
    """Every shared part, wired once; the restart hook exists from the start."""
    memory = ChatMemory(
        db,
        cache_chats=settings.context_cache_chats,
        # a window rebuilt after a restart must hold everything not yet folded
        window_load_limit=max(200, settings.context_max_messages + 2),
    )
    media = MediaStore(settings.media_dir)
    context = ContextWindowManager(
        memory,
        system_prompt=settings.system_prompt,
        max_messages=settings.context_max_messages,
        max_tokens=settings.context_max_tokens,
        summary_max_tokens=settings.context_summary_max_tokens,
        media=media,
        max_images=settings.context_max_images,
    )
    admission = Admission()
    limiter = AdjustableLimiter(settings.llm_concurrency)
    runtime: Runtime | None = None

    async def status_line() -> str:  # the /status command; runtime is set below
        assert runtime is not None
        return health.status_line(await health.health_report(runtime))

    chat = ChatService(
        memory,
        context,
        llm,
        admission=admission,
        limiter=limiter,
        queue_limit=settings.chat_queue_limit,
        operator_ids=frozenset(
            [] if settings.telegram_admin_id is None else [str(settings.telegram_admin_id)]
        ),
        status_line=status_line,
        budgets=Budgets.from_settings(db, settings),
        rate_limiter=RateLimiter(settings.rate_limit_user_per_min),
        idle_reset_s=settings.context_idle_reset_min * 60.0,
        usage=UsageRecorder(prices=prices_from(settings)),
        models=models,
        media=media,
        stt=stt,
    )
    started = time.monotonic()
    runtime = Runtime(
        settings=settings,
        db=db,
        memory=memory,
        context=context,
        llm=llm,
        chat=chat,
        admission=admission,
        limiter=limiter,
        admin_token=resolve_admin_token(settings),
        lifecycle=lifecycle.Lifecycle(
            settings,
            admission,
            db,
            started_monotonic=started,
            exit_hook=exit_hook,
            notifier=notifier,
        ),
        started_monotonic=started,
        queue_depth=queue_depth,
        stt=stt,
    )
    chat.usage.counters = runtime.counters
    runtime.uploads.admission = admission  # a body still coming when draining: 503 at once
    return runtime


def make_llm(settings: Settings) -> LLMClient:
    return llm_from_settings(settings)


def make_models(settings: Settings) -> Models:
    """One client per model profile (VIGIL_LLM_MODELS, or the one VIGIL_LLM_* model)."""
    return Models.from_settings(settings)


# Extension points: each gets (app, runtime, stack) and may push cleanups.
Starter = Callable[[FastAPI, Runtime, contextlib.AsyncExitStack], Any]


def create_app(
    settings: Settings | None = None,
    *,
    telegram: Any = None,
    llm: LLMClient | None = None,
    starters: list[Starter] | None = None,
    models: Models | None = None,
) -> FastAPI:
    """Build the FastAPI app. ``telegram``/``llm`` let tests inject fakes."""
    settings = settings or load_settings()
    extra_starters = list(starters or [])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            db = Database(settings.db_path)
            await db.open()
            stack.push_async_callback(db.close)
            if models is None:
                profiles = Models.single(llm) if llm is not None else make_models(settings)
                if llm is None:
                    stack.push_async_callback(profiles.aclose)
            else:
                profiles = models
            client = profiles.primary
            stt = SpeechToText.from_settings(settings)  # None: voice notes refused politely
            if stt is not None:
                stack.push_async_callback(stt.aclose)
            runtime = build_runtime(
                settings,
                db,
                client,
                models=profiles,
                exit_hook=getattr(app.state, "exit_hook", None),
                notifier=SdNotifier.from_environ(os.environ),
                queue_depth=_queue_depth(settings),
                stt=stt,
            )
            app.state.vigil = runtime
            await health.start_health_checks(runtime, stack)
            stack.push_async_callback(runtime.chat.drain_background)
            probe = asyncio.ensure_future(_probe_loop(profiles, settings.llm_probe_interval_s, stt))
            stack.callback(probe.cancel)
            for starter in [*_default_starters(telegram), *extra_starters]:
                result = starter(app, runtime, stack)
                if asyncio.iscoroutine(result):
                    await result
            log.info(
                "Vigil %s ready on %s (pid %d, model %s at %s, telegram %s)",
                __version__,
                settings.base_url,
                runtime.pid,
                client.model,
                client.display_url,
                runtime.telegram_state(),
            )
            yield
            log.info("Vigil shutting down")

    docs: dict[str, Any] = {}
    if not settings.public_docs:  # the API's map is not for the network to read
        docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Vigil", version=__version__, lifespan=lifespan, **docs)
    install_error_handlers(app)
    app.add_middleware(BodyGuard)
    # Outermost: a request for a foreign Host is refused before anything else.
    app.add_middleware(TrustedHosts, allowed_hosts=trusted_host_patterns(settings.trusted_hosts))
    app.add_middleware(RequestMeter)  # around everything: refused requests are counted too
    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(web.router)
    app.include_router(restart_routes.router)
    app.include_router(telegram_routes.router)
    app.include_router(announce.router)
    app.include_router(usage_routes.router)
    from monitoring.routes import router as monitoring_router

    app.include_router(monitoring_router)
    from core.admin_routes import router as admin_router  # db maintenance, data deletion

    app.include_router(admin_router)
    return app


def _queue_depth(settings: Settings) -> QueueDepth | None:
    """The Huey queue's pending/scheduled counts (tasks/ is wired in here, nowhere else)."""
    try:
        from tasks.queue import queue_depth
    except ImportError:
        return None
    return lambda: queue_depth(settings)


def _default_starters(telegram: Any) -> list[Starter]:
    """Telegram and monitoring plug in here (their issues)."""
    from core.dbwatch import start_database_watch
    from core.maintenance_mode import start_maintenance_watch
    from core.reload import start_reload_handler
    from core.telegram.app import telegram_starter
    from monitoring.scheduled_restart import start_auto_restart
    from monitoring.starter import start_monitoring

    return [
        start_metering,  # first: its final flush runs after the others stopped
        lifecycle.start_lifecycle,
        start_auto_restart,
        start_maintenance_watch,  # before Telegram: resumed messages see the mode
        telegram_starter(telegram),
        start_monitoring,
        start_database_watch,
        start_reload_handler,
    ]
