"""Named model profiles: one LLMClient each, the chat's choice, and the fallback.

``Models`` holds a client per profile (``VIGIL_LLM_MODELS``; without it one
profile named after ``VIGIL_LLM_MODEL``). :meth:`Models.route` gives the
profiles to try for a turn, in order: the chat's profile, then
``VIGIL_LLM_FALLBACK``. A profile already known to be down is skipped at once
(no timeout per turn) and re-probed in the background, so it is used again as
soon as it answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from core.errors import LLMError, LLMTimeout, LLMUnavailable
from core.llm import RETRY_STATUSES, LLMClient

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

# A failure that means "this model is down", not "this request was wrong".
DOWN_CODES = frozenset({LLMUnavailable.code, LLMTimeout.code})


def fails_over(exc: LLMError) -> bool:
    """Unreachable, timeout, 5xx or 429 (after the client's retries): try the fallback."""
    if isinstance(exc, LLMTimeout):
        return True
    if not isinstance(exc, LLMUnavailable):
        return False
    status = exc.fields.get("http_status")
    return status is None or status in RETRY_STATUSES


def known_down(client: LLMClient) -> bool:
    status = client.status
    return status.state in ("unreachable", "error") and status.code in DOWN_CODES


class Models:
    """Every profile's client; the default, the fallback and the user's choices."""

    def __init__(
        self,
        clients: dict[str, LLMClient],
        *,
        default: str | None = None,
        fallback: str | None = None,
        user_models: list[str] | None = None,
        vision: frozenset[str] = frozenset(),
        vision_model: str | None = None,
    ) -> None:
        if not clients:
            raise ValueError("at least one model profile is needed")
        self.clients = clients
        self.default = default or next(iter(clients))
        self.fallback = fallback
        self.user_models = list(user_models or clients)
        self.vision = vision  # the profiles with ``vision: true``
        self.vision_model = vision_model  # VIGIL_LLM_VISION_MODEL
        self._probes: dict[str, asyncio.Task[Any]] = {}

    @classmethod
    def single(cls, client: LLMClient) -> Models:
        return cls({client.name: client})

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Models:
        clients = {
            name: LLMClient(
                base_url=profile.base_url,
                model=profile.model,
                api_key=profile.api_key,
                timeout_s=settings.llm_timeout_s,
                connect_timeout_s=settings.llm_connect_timeout_s,
                max_tokens=profile.max_tokens,
                temperature=settings.llm_temperature,
                max_retries=settings.llm_max_retries,
                name=name,
                **overrides,
            )
            for name, profile in settings.model_profiles.items()
        }
        return cls(
            clients,
            default=settings.default_model,
            fallback=settings.llm_fallback,
            user_models=settings.user_models,
            vision=frozenset(n for n, p in settings.model_profiles.items() if p.vision),
            vision_model=settings.llm_vision_model,
        )

    @property
    def primary(self) -> LLMClient:
        return self.clients[self.default]

    def resolve(self, chosen: str | None) -> str:
        """The profile a chat uses: its choice if that still exists, else the default."""
        return chosen if chosen is not None and chosen in self.clients else self.default

    def sees(self, name: str) -> bool:
        """Whether images may go to this profile (``vision: true``, or the vision model)."""
        return name in self.vision or name == self.vision_model

    def vision_for(self, chosen: str | None) -> str | None:
        """The profile that reads a chat's images: its own if it has vision, else
        VIGIL_LLM_VISION_MODEL; None: images cannot be read in this chat."""
        name = self.resolve(chosen)
        if self.sees(name):
            return name
        return self.vision_model

    def route(self, chosen: str | None, *, images: bool = False) -> list[LLMClient]:
        """The clients to try for a turn, in order; a known-down one is left out when
        another is there to answer (and re-probed in the background).

        ``images``: the prompt carries images, so only profiles that see are
        tried (the fallback too); the caller checked :meth:`vision_for` first.
        """
        if images:
            first = self.clients[self.vision_for(chosen) or self.resolve(chosen)]
        else:
            first = self.clients[self.resolve(chosen)]
        if self.fallback is None or self.fallback == first.name:
            return [first]
        if images and not self.sees(self.fallback):
            return [first]
        second = self.clients[self.fallback]
        if known_down(first) and not known_down(second):
            self.reprobe(first)
            return [second]
        return [first, second]

    def reprobe(self, client: LLMClient) -> None:
        """One background probe at a time per profile."""
        task = self._probes.get(client.name)
        if task is not None and not task.done():
            return
        self._probes[client.name] = asyncio.ensure_future(client.probe())

    async def wait_probes(self) -> None:
        """Until the background re-probes started so far are done (tests, shutdown)."""
        pending = [task for task in self._probes.values() if not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def probe_all(self) -> None:
        await asyncio.gather(*(client.probe() for client in self.clients.values()))

    async def aclose(self) -> None:
        for task in self._probes.values():
            task.cancel()
        for client in self.clients.values():
            await client.aclose()

    @property
    def failures(self) -> int:
        return sum(client.failures for client in self.clients.values())

    @property
    def retries(self) -> int:
        return sum(client.retries for client in self.clients.values())

    def states(self) -> dict[str, dict[str, Any]]:
        """``/health`` ``checks.llm.profiles``: each profile's state (no secrets)."""
        return {
            name: {
                "status": client.status.state,
                "url": client.display_url,
                "model": client.model,
                "detail": client.status.detail,
                "code": client.status.code or None,
                "checked_at": client.status.checked_at or None,
                "latency_ms": client.status.latency_ms,
                "default": name == self.default,
                "fallback": name == self.fallback,
            }
            for name, client in self.clients.items()
        }

    def status_key(self) -> tuple[int, ...]:
        return tuple(id(client.status) for client in self.clients.values())
