"""The typed runtime: every part the routes and background loops share.

One ``Runtime`` per server process, built by the composition root
(``core/app.py``) in the lifespan. Its fields are the shared parts by name
and type; the subsystems that start later (Telegram, monitoring, the
scheduled restart, the health checks) fill their own field once. The
restart hook is there from construction: the Lifecycle is built with the
runtime, so nothing needs a late lookup.

Routes get it through FastAPI's dependency injection (``RuntimeDep``).
``core`` may not import ``monitoring`` (the app assembly wires it in), so the
few things core needs from monitoring are small protocols here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from core.audit import AuthAudit
from core.counter_buffer import CounterBuffer
from core.uploads import UploadGate

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from core.admission import AdjustableLimiter, Admission
    from core.chat import ChatService
    from core.config import Settings
    from core.context import ContextWindowManager
    from core.database import Database
    from core.health_checks import HealthChecks
    from core.lifecycle import Lifecycle
    from core.llm import LLMClient
    from core.memory import ChatMemory
    from core.models import Models
    from core.stt import SpeechToText
    from core.telegram.bot import TelegramBot
    from core.telegram.channel import TelegramChannel
    from core.telegram.gateway import TelegramGateway


class RestartHook(Protocol):
    """``Lifecycle.request_restart``: start the graceful path; False if one runs."""

    def __call__(self, reason: str, detail: str = "", *, immediate: bool = False) -> bool: ...


class Alerts(Protocol):
    """What core raises through monitoring (``IntegratedMonitoringSystem.condition``)."""

    async def condition(
        self,
        key: str,
        active: bool,
        *,
        alert_type: str,
        severity: str,
        message: str,
        action: str,
    ) -> None: ...


class ScheduledRestarts(Protocol):
    """The daily scheduled restart, as ``/restart/status`` shows it."""

    def status(self) -> dict[str, Any]: ...


QueueDepth = Callable[[], dict[str, Any]]


@dataclass(eq=False)
class Runtime:
    """Everything the routes and background loops share (``RuntimeDep``)."""

    settings: Settings
    db: Database
    memory: ChatMemory
    context: ContextWindowManager
    llm: LLMClient
    chat: ChatService
    admission: Admission
    limiter: AdjustableLimiter
    admin_token: str
    lifecycle: Lifecycle
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    # Filled by their starters; None while (or when) a part is not running.
    telegram: TelegramGateway | None = None
    telegram_bot: TelegramBot | None = None
    telegram_channel: TelegramChannel | None = None
    # The IntegratedMonitoringSystem (monitoring/ reads it with its own type).
    monitoring: Alerts | None = None
    health: HealthChecks | None = None
    scheduled_restarts: ScheduledRestarts | None = None
    metrics_registry: CollectorRegistry | None = None
    # The task queue's pending/scheduled counts (tasks/ is wired in by the app).
    queue_depth: QueueDepth | None = None
    # The speech-to-text client (VIGIL_STT_BASE_URL); None: voice notes are refused.
    stt: SpeechToText | None = None
    # Monotonic counters (core/metering.py) and refused admin tokens (core/audit.py).
    counters: CounterBuffer = field(default_factory=CounterBuffer)
    audit: AuthAudit = field(init=False)
    # Large message bodies (images, audio) read at once by the local API.
    uploads: UploadGate = field(default_factory=UploadGate)

    def __post_init__(self) -> None:
        self.audit = AuthAudit(self.counters)

    @property
    def request_restart(self) -> RestartHook:
        """The one restart hook: governor, schedule, /restart/force, the database watch."""
        return self.lifecycle.request_restart

    @property
    def models(self) -> Models:
        """Every model profile's client (``llm`` is the default profile's)."""
        return self.chat.models

    def telegram_state(self) -> str:
        if self.telegram is None:
            return "not_configured"
        return str(self.telegram.state)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.vigil
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
