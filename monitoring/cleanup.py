"""The governor's thin effects on the running server: clean, prune, throttle.

``RuntimeEffects`` adapts the server's runtime (ChatMemory's window cache,
ContextWindowManager.prune, Admission, the LLM limiter) to what the governor
does; it decides nothing. Chat history always stays in SQLite: eviction only
drops in-memory windows, which are rebuilt from the database on next use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from core.rss import MB, rss_bytes

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 1800.0  # "active session" = a chat with activity in the last 30 min
EMERGENCY_IDLE_S = 900.0  # an emergency cleanup evicts windows idle this long
AGGRESSIVE_IDLE_S = 120.0  # the high-memory response evicts nearly everything
AGGRESSIVE_KEEP = 50  # ... but keeps this many most recent windows at most


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim returns freed heap pages to the OS; absent elsewhere."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> dict[str, Any]:
    """A full gc, then malloc_trim where available."""
    collected = gc.collect()
    trimmed = None
    if _MALLOC_TRIM is not None:
        trimmed = bool(_MALLOC_TRIM(0))
    return {"gc_objects": collected, "malloc_trim": trimmed}


def _own_rss_mb() -> float:
    return rss_bytes(psutil.Process()) / MB


def estimate_window_bytes(window: Any) -> int:
    """A rough in-memory size of a cached chat window (str ~1 byte/char + overheads)."""
    turns = getattr(window, "turns", [])
    text = sum(len(t.content) for t in turns) + len(getattr(window, "summary", ""))
    return 1024 + text + 250 * len(turns)


class RuntimeEffects:
    """What the governor can do to the server, over the runtime's public APIs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.configured_limit = int(runtime.limiter.configured)

    # --- readings for snapshots --------------------------------------------------
    def active_sessions(self) -> int:
        return int(self.runtime.memory.active_chats(within_s=ACTIVE_WINDOW_S))

    def cached_sessions(self) -> int:
        return len(self.runtime.memory.cached_chats())

    def in_flight(self) -> int:
        return int(self.runtime.admission.in_flight)

    # --- cleaning ------------------------------------------------------------------
    async def prune_contexts(self) -> int:
        """Fold what exceeds the context limits in every cached window."""
        folded = 0
        limit = self.runtime.context.max_messages
        for window in self.runtime.memory.cached_chats():
            if len(window.turns) > limit:
                folded += await self.runtime.context.prune(window.chat_id)
        return folded

    async def optimise(self) -> dict[str, Any]:
        """The 60 s cycle: context pruning and cache trimming."""
        pruned = await self.prune_contexts()
        trimmed = self.runtime.memory.trim_cache(self.settings.context_cache_chats)
        return {"pruned_turns": pruned, "trimmed_windows": trimmed}

    def evict_idle(self) -> int:
        """The 5 min cycle: sessions idle past VIGIL_GOVERNOR_SESSION_IDLE_S leave memory."""
        return int(self.runtime.memory.evict_idle(idle_s=self.settings.governor_session_idle_s))

    async def cleanup(self, *, aggressive: bool) -> dict[str, Any]:
        """Emergency cleanup; returns what it did and the RSS it freed right away."""
        started = time.perf_counter()
        before = _own_rss_mb()
        memory = self.runtime.memory
        idle_s = AGGRESSIVE_IDLE_S if aggressive else EMERGENCY_IDLE_S
        evicted = memory.evict_idle(idle_s=idle_s)
        if aggressive:
            evicted += memory.trim_cache(AGGRESSIVE_KEEP)
        pruned = await self.prune_contexts()
        released = release_memory()
        after = _own_rss_mb()
        return {
            "aggressive": aggressive,
            "evicted_sessions": evicted,
            "pruned_turns": pruned,
            **released,
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1),
            # RSS that grew meanwhile freed nothing: 0, never a negative (or "-0") amount
            "freed_mb": max(0.0, round(before - after, 1)),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    # --- load shedding -------------------------------------------------------------
    def throttle(self, retry_after_s: float, reason: str) -> None:
        self.runtime.admission.throttle(retry_after=retry_after_s, reason=reason)

    def unthrottle(self) -> None:
        self.runtime.admission.unthrottle()

    async def set_llm_reduced(self, reduced: bool) -> int:
        limit = max(1, self.configured_limit // 2) if reduced else self.configured_limit
        if self.runtime.limiter.limit != limit:
            await self.runtime.limiter.set_limit(limit)
            log.warning("LLM concurrency set to %d (configured %d)", limit, self.configured_limit)
        return limit

    # --- reports -------------------------------------------------------------------
    def turn_stats(self) -> dict[str, Any]:
        """Turn counts and recent latency: the performance history of the chat pipeline."""
        stats = self.runtime.chat.stats
        ordered = sorted(stats.latencies)

        def quantile(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "answered": stats.turns,
            "failed": stats.failed,
            "rejected": stats.rejected + self.runtime.admission.rejected,
            "latency_p50_s": quantile(0.5),
            "latency_p95_s": quantile(0.95),
        }

    def sessions(self, now: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for window in self.runtime.memory.cached_chats():
            rows.append(
                {
                    "chat_id": window.chat_id,
                    "last_active": window.last_active,
                    "idle_s": round(max(0.0, now - window.last_active), 1),
                    "context_messages": len(window.turns),
                    "context_tokens": window.tokens,
                    "summary_chars": len(window.summary),
                    "memory_estimate_bytes": estimate_window_bytes(window),
                    "active": now - window.last_active <= ACTIVE_WINDOW_S,
                    "pending_turns": self.runtime.chat.pending(window.chat_id),
                }
            )
        rows.sort(key=lambda r: r["memory_estimate_bytes"], reverse=True)
        return rows
