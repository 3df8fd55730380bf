"""Named model profiles: one LLMClient each, the chat's choice, and the fallback.

``Models`` holds a client per profile (``VIGIL_LLM_MODELS``; without it one
profile named after ``VIGIL_LLM_MODEL``). :meth:`Models.route` gives the
profiles to try for a turn, in order: the chat's profile, then
``VIGIL_LLM_FALLBACK``. A profile already known to be down is skipped at once
(no timeout per turn) and re-probed in the background, so it is used again as
soon as it answers.

Known down: its last call or probe failed with an outage (unreachable, a
timeout, 429/5xx), or a real call failed so and the hold since has not passed.
The hold (``REPROBE_GAP_S``, doubled with each real call that failed again
after a good probe, at most ``hold_max_s``) keeps a server whose ``/models``
answers while its completions fail from costing a failed attempt every turn.
Re-probes started by turns are spaced by ``REPROBE_GAP_S``; the periodic
probe (``VIGIL_LLM_PROBE_INTERVAL_S``) runs besides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.errors import LLMError, LLMTimeout, LLMUnavailable
from core.llm import LLMClient, is_outage

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

# A failure that means "this model is down", not "this request was wrong".
DOWN_CODES = frozenset({LLMUnavailable.code, LLMTimeout.code})
# The least time between two re-probes of a down profile started by turns, and
# the first hold after a real call failed.
REPROBE_GAP_S = 2.0
HOLD_MAX_S = 30.0


def fails_over(exc: LLMError) -> bool:
    """Unreachable, timeout, 5xx or 429 (after the client's retries): try the fallback."""
    return is_outage(exc)


def hold_s(outages: int, gap: float = REPROBE_GAP_S, cap: float = HOLD_MAX_S) -> float:
    """How long a profile whose real calls failed ``outages`` times in a row is skipped
    even when its probe answers: the gap, doubled per failure after the first."""
    if outages <= 0:
        return 0.0
    return min(gap * 2 ** min(outages - 1, 16), max(cap, gap))


def known_down(
    client: LLMClient,
    now: float | None = None,
    *,
    gap: float = REPROBE_GAP_S,
    cap: float = HOLD_MAX_S,
) -> bool:
    """Skip this profile now: its state is down, or it is held after failed calls."""
    status = client.status
    if status.state in ("unreachable", "error") and status.code in DOWN_CODES:
        return True
    if client.outages <= 0:
        return False
    now = time.monotonic() if now is None else now
    return now < client.outage_at + hold_s(client.outages, gap, cap)


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
        context_tokens: dict[str, int] | None = None,
        reprobe_gap_s: float = REPROBE_GAP_S,
        hold_max_s: float = HOLD_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not clients:
            raise ValueError("at least one model profile is needed")
        self.clients = clients
        self.default = default or next(iter(clients))
        self.fallback = fallback
        self.user_models = list(user_models or clients)
        self.vision = vision  # the profiles with ``vision: true``
        self.vision_model = vision_model  # VIGIL_LLM_VISION_MODEL
        # Each profile's context window (``context_tokens``), where set.
        self.context_tokens = dict(context_tokens or {})
        self.reprobe_gap_s = reprobe_gap_s
        self.hold_max_s = hold_max_s
        self.clock = clock  # monotonic seconds (the hold, the re-probe gap)
        self._probes: dict[str, asyncio.Task[Any]] = {}
        self._probed_at: dict[str, float] = {}  # when a turn last started a re-probe
        for name, client in clients.items():  # a trial after failed calls: no retries
            client.fail_fast = fallback is not None and name != fallback

    @classmethod
    def single(cls, client: LLMClient) -> Models:
        return cls({client.name: client})

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> Models:
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
                clock=clock,
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
            context_tokens={
                n: p.context_tokens
                for n, p in settings.model_profiles.items()
                if p.context_tokens is not None
            },
            hold_max_s=settings.llm_probe_interval_s,
            clock=clock,
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

    def prompt_limit(self, name: str) -> int | None:
        """The prompt room of a profile: its ``context_tokens`` minus its answer's
        ``max_tokens``; None: not set (``VIGIL_CONTEXT_MAX_TOKENS`` alone applies)."""
        window = self.context_tokens.get(name)
        if window is None:
            return None
        return max(64, window - self.clients[name].max_tokens)

    def chat_limit(self, chosen: str | None, *, images: bool = False) -> int | None:
        """The prompt room of a chat's turn: its profile's, and with images the
        vision profile's too (the smaller). The fallback's is applied when it
        answers (``Prompt.fit``), so a small fallback never shrinks the chat's context."""
        names = {self.resolve(chosen)}
        if images:
            names.add(self.vision_for(chosen) or self.resolve(chosen))
        limits = [n for n in (self.prompt_limit(name) for name in names) if n is not None]
        return min(limits) if limits else None

    def is_down(self, client: LLMClient) -> bool:
        """:func:`known_down` with this set's clock, gap and hold."""
        return known_down(client, self.clock(), gap=self.reprobe_gap_s, cap=self.hold_max_s)

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
        if self.is_down(first) and not self.is_down(second):
            if client_failing(first):
                self.reprobe(first)
            return [second]
        return [first, second]

    def reprobe(self, client: LLMClient) -> bool:
        """A background probe, one at a time per profile and at most one per
        ``reprobe_gap_s`` (a dead or hung model is not hammered); True: started."""
        task = self._probes.get(client.name)
        if task is not None and not task.done():
            return False
        now = self.clock()
        last = self._probed_at.get(client.name)
        if last is not None and now - last < self.reprobe_gap_s:
            return False
        self._probed_at[client.name] = now
        self._probes[client.name] = asyncio.ensure_future(client.probe())
        return True

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
                "down": self.is_down(client),
                "failed_calls": client.outages,
            }
            for name, client in self.clients.items()
        }

    def down(self) -> list[str]:
        """The profiles skipped right now (known down or held)."""
        return [name for name, client in self.clients.items() if self.is_down(client)]

    def status_key(self) -> tuple[Any, ...]:
        return tuple((id(c.status), c.outages, self.is_down(c)) for c in self.clients.values())


def client_failing(client: LLMClient) -> bool:
    """Its state says down (a probe can tell when it is back); else it is only held."""
    return client.status.state in ("unreachable", "error")
