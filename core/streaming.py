"""StreamingOptimizer: turns a token stream into channel messages.

First visible text as soon as the first tokens arrive, then edits no more
often than the channel's interval and only when the text grew meaningfully,
never an edit that changes nothing; text longer than the channel's message
limit continues in new messages split at paragraph or sentence boundaries.
The final full text always lands.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from core.channel import Channel

log = logging.getLogger(__name__)

_BOUNDARIES = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?…])\s"),
    re.compile(r"\s"),
)


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters.

    Prefers paragraph, then line, then sentence, then word boundaries; the
    boundary whitespace stays with the earlier part, so ``"".join(parts) ==
    text`` always holds. Greedy from the start, hence stable while the text
    grows: an earlier part never changes once a later part exists.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = 0
        for pattern in _BOUNDARIES:
            ends = [m.end() for m in pattern.finditer(window) if m.end() <= limit]
            if ends and ends[-1] >= limit // 2:
                cut = ends[-1]
                break
        if cut == 0:
            cut = limit
        parts.append(rest[:cut])
        rest = rest[cut:]
    parts.append(rest)
    return parts


class StreamingOptimizer:
    """Streams one reply into one chat through a ``Channel``."""

    def __init__(
        self,
        channel: Channel,
        chat_id: str,
        *,
        min_growth_chars: int = 24,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.chat_id = chat_id
        self.min_growth_chars = min_growth_chars
        self.clock = clock
        self.text = ""
        self.shown: list[str] = []
        self.message_ids: list[str] = []
        self.edits = 0
        self.sends = 0
        self.first_visible_at: float | None = None
        self.started_at = clock()
        self._last_flush = float("-inf")

    async def start(self) -> None:
        try:
            await self.channel.typing(self.chat_id)
        except Exception:  # typing is cosmetic; never fail a turn on it
            log.debug("typing action failed in %s", self.chat_id, exc_info=True)

    async def push(self, delta: str) -> None:
        self.text += delta
        if self._is_due():
            await self._flush()

    def _is_due(self) -> bool:
        if not self.text.strip():
            return False
        if not self.shown:
            return True
        if self.clock() - self._last_flush < self.channel.edit_interval(self.chat_id):
            return False
        return len(self.text) - sum(len(s) for s in self.shown) >= self.min_growth_chars

    async def finish(self, text: str | None = None) -> list[str]:
        """Make the full text visible; returns the ids of all messages sent."""
        if text is not None:
            self.text = text
        if not self.text.strip():
            self.text = "…"
        await self._flush()
        return list(self.message_ids)

    async def _flush(self) -> None:
        parts = split_text(self.text, self.channel.max_message_chars)
        for index, part in enumerate(parts):
            if not part.strip():
                continue
            if index < len(self.shown):
                if self.shown[index] != part:
                    await self.channel.edit(self.chat_id, self.message_ids[index], part)
                    self.shown[index] = part
                    self.edits += 1
            else:
                message_id = await self.channel.send(self.chat_id, part)
                self.message_ids.append(message_id)
                self.shown.append(part)
                self.sends += 1
                if self.first_visible_at is None:
                    self.first_visible_at = self.clock()
        self._last_flush = self.clock()
