"""Fixtures for the core tests: a filled database (shared with the task tests),
and runtimes built from settings with every model profile."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from core.app import build_runtime
from core.config import Settings
from core.database import Database
from core.models import Models
from core.runtime import Runtime
from core.stt import SpeechToText
from tests.operator_cli import fake_server_process, filled, tsettings

__all__ = ["fake_server_process", "filled", "runtime_factory", "tsettings"]

RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def runtime_factory() -> AsyncIterator[RuntimeFactory]:
    """``await runtime_factory(settings, **models_overrides)``: a Runtime on a real
    SQLite file with one client per model profile (``Models.from_settings``, the
    overrides e.g. a ``clock``) and the speech-to-text client when configured
    (fast retries); all closed after the test."""
    opened: list[tuple[Database, Models, SpeechToText | None]] = []

    async def factory(settings: Settings, **models_overrides: Any) -> Runtime:
        db = Database(settings.db_path)
        await db.open()
        models = Models.from_settings(settings, **models_overrides)
        stt = SpeechToText.from_settings(settings, backoff_s=0.01)
        opened.append((db, models, stt))
        return build_runtime(settings, db, models.primary, models=models, stt=stt)

    yield factory
    for db, models, stt in opened:
        if stt is not None:
            await stt.aclose()
        await models.aclose()
        await db.close()
