"""StreamingOptimizer: turns a token stream into channel messages.

First visible text as soon as the first tokens arrive, then edits no more
often than an adaptive per-chat interval and only when the text grew
meaningfully; never an edit that changes nothing; text longer than the
channel's message limit continues in new messages split at paragraph or
sentence boundaries. One :class:`EditScheduler` per channel is shared by all
replies: it holds the global edit budget (a token bucket), each chat's flood
penalty and the count of streams in progress. A rate limit (Telegram's
FloodWait, raised to us as ``RateLimited``) blocks that chat for the time
asked, widens its interval, and the final full text still lands.

Scheduling decisions are pure functions of (state, now); the optimizer only
carries them out. Time comes from an injected clock and sleep, so tests and
benchmarks run a 60-second stream in milliseconds on a virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.channel import Channel
from core.edit_scheduler import EditScheduler
from core.errors import ChannelError, RateLimited

log = logging.getLogger(__name__)
__all__ = ["EditScheduler", "StreamingOptimizer", "split_text", "utf16_len"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_BOUNDARIES = (
    re.compile(r"\n\s*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?…])\s"),
    re.compile(r"\s"),
)
TYPING_EVERY_S = 4.5  # Telegram's typing action lasts about 5 s
FINAL_ATTEMPTS = 12  # rate-limit retries of one final operation before giving up
BLANK = "…"  # what a message no longer needed by the final text is edited to


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The largest n such that ``measure(text[:n]) <= limit``."""
    low, high = 1, min(len(text), limit)  # every character measures at least 1
    while low < high:
        mid = (low + high + 1) // 2
        if measure(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Split ``text`` into parts with ``measure(part) <= limit``.

    Prefers paragraph, then line, then sentence, then word boundaries; the
    boundary whitespace stays with the earlier part, so ``"".join(parts) ==
    text`` always holds. Greedy from the start, hence stable while the text
    grows: an earlier part never changes once a later part exists.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text
    while measure(rest) > limit:
        size = _fit(rest, limit, measure)
        window = rest[: size + 1]
        cut = 0
        for pattern in _BOUNDARIES:
            ends = [m.end() for m in pattern.finditer(window) if m.end() <= size]
            if ends and ends[-1] >= size // 2:
                cut = ends[-1]
                break
        if cut == 0:
            cut = size
        parts.append(rest[:cut])
        rest = rest[cut:]
    parts.append(rest)
    return parts


@dataclass(frozen=True, slots=True)
class _Op:
    index: int  # which part of the reply
    text: str
    is_send: bool
    replaces: bool = False  # a send standing in for a failed edit


class StreamingOptimizer:
    """Streams one reply into one chat through a ``Channel``.

    ``scheduler`` defaults to the channel's own ``scheduler`` attribute when
    it has one (the Telegram channel does), else to an unlimited one.
    """

    def __init__(
        self,
        channel: Channel,
        chat_id: str,
        *,
        min_growth_chars: int = 24,
        scheduler: EditScheduler | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.channel = channel
        self.chat_id = chat_id
        self.min_growth_chars = min_growth_chars
        self.scheduler = scheduler or getattr(channel, "scheduler", None) or EditScheduler()
        self.measure: Callable[[str], int] = getattr(channel, "measure", len)
        self.clock = clock or _default_clock()
        self.sleep = sleep
        self.text = ""
        self.shown: list[str] = []
        self.message_ids: list[str] = []
        self.edits = 0
        self.sends = 0
        self.failures = 0
        self.cancelled = False
        self.first_visible_at: float | None = None
        self.started_at = self.clock()
        self._last_flush = -math.inf
        self._begun = False
        self._released = False
        self._typing_task: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Show the typing action at once; counts this reply as streaming.

        Telegram shows *typing…* for about 5 s, so it is repeated every
        ``TYPING_EVERY_S`` until the first text is visible (a slow model).
        A reply once released is never counted (or typed for) again.
        """
        if self._released:
            return
        if not self._begun:
            self._begun = True
            self.scheduler.begin(self.chat_id)
        try:
            await self._typing()
        except BaseException:  # cancelled before the reply began: its caller never releases
            self.release()
            raise
        # release() may have run while the typing action was on its way
        if self._typing_task is None and not self._released:
            self._typing_task = asyncio.ensure_future(self._keep_typing())

    async def _typing(self) -> None:
        try:
            await self.channel.typing(self.chat_id)
        except Exception:  # typing is cosmetic; never fail a turn on it
            log.debug("typing action failed in %s", self.chat_id, exc_info=True)

    async def _keep_typing(self) -> None:
        for _ in range(40):  # bounded (3 min): a reply that never starts must not type forever
            await self.sleep(TYPING_EVERY_S)
            if self.first_visible_at is not None or self._released:
                return
            await self._typing()

    def cancel(self) -> None:
        """Stop showing new text; :meth:`finish` still lands what is given to it."""
        self.cancelled = True

    async def push(self, delta: str) -> None:
        if self.cancelled:
            return
        self.text += delta
        if self._is_due(self.clock()):
            await self._flush_some()

    def _is_due(self, now: float) -> bool:
        if not self.text.strip():
            return False
        if not self.shown:
            return True
        base = self.channel.edit_interval(self.chat_id)
        if now - self._last_flush < self.scheduler.interval(self.chat_id, base, now):
            return False
        return len(self.text) - sum(len(s) for s in self.shown) >= self.min_growth_chars

    def _plan(self) -> list[_Op]:
        # Whitespace-only parts cannot be sent (and only occur at the growing
        # end or inside absurd whitespace runs), so messages map to the others.
        split = split_text(self.text, self.channel.max_message_chars, self.measure)
        parts = [part for part in split if part.strip()]
        ops: list[_Op] = []
        for index, part in enumerate(parts):
            if index >= len(self.shown):
                ops.append(_Op(index, part, is_send=True))
            elif self.shown[index] != part:
                ops.append(_Op(index, part, is_send=False))
        return ops

    async def _flush_some(self) -> None:
        """Intermediate flush: as many operations as the budget allows now."""
        for op in self._plan():
            urgent = op.is_send and op.index == 0  # the first visible text
            if not self.scheduler.try_acquire(self.chat_id, self.clock(), urgent=urgent):
                return
            try:
                await self._apply(op)
            except RateLimited as exc:
                self.scheduler.on_flood(self.chat_id, exc.retry_after, self.clock())
                log.info(
                    "chat %s: rate limited for %.0f s mid-stream", self.chat_id, exc.retry_after
                )
                return
            except ChannelError as exc:
                self.failures += 1
                log.warning("chat %s: intermediate update failed: %s", self.chat_id, exc.message)
                return
        self._last_flush = self.clock()

    async def finish(self, text: str | None = None) -> list[str]:
        """Make the full text visible, waiting out rate limits.

        Returns the ids of the messages holding the reply. A final text shorter
        than what was streamed (an error after a long partial reply) leaves
        earlier extra messages behind; they are emptied to ``…`` so no stale
        half-answer stays under the final text.
        """
        if text is not None:
            self.text = text
        if not self.text.strip():
            self.text = "…"
        try:
            for op in self._plan():
                await self._apply_final(op)
            used = self._parts_count()
            for index in range(used, len(self.shown)):
                await self._blank(index)
        finally:
            self.release()
        self._last_flush = self.clock()
        return self.message_ids[:used]

    def _parts_count(self) -> int:
        split = split_text(self.text, self.channel.max_message_chars, self.measure)
        return sum(1 for part in split if part.strip())

    async def _blank(self, index: int) -> None:
        """Empty a message the final text no longer needs (channels cannot delete)."""
        if self.shown[index] == BLANK:
            return
        try:
            await self._apply_final(_Op(index, BLANK, is_send=False), resend=False)
        except ChannelError as exc:  # deleted by the chatter already: nothing is stale
            log.warning("chat %s: could not empty an extra message: %s", self.chat_id, exc)

    def release(self) -> None:
        """No longer count this reply as streaming and stop the typing action.

        Idempotent, and safe at any point: before :meth:`start`, before any
        token, after :meth:`finish`. Every exit path of a turn may call it.
        """
        self._released = True
        if self._typing_task is not None:
            self._typing_task.cancel()
        if self._begun:
            self._begun = False
            self.scheduler.end(self.chat_id, self.clock())

    async def _apply_final(self, op: _Op, *, resend: bool = True) -> None:
        for _attempt in range(FINAL_ATTEMPTS):
            while (wait := self.scheduler.wait_time(self.chat_id, self.clock())) > 0:
                await self.sleep(max(wait, 0.01))  # a tiny wait would spin on float dust
            self.scheduler.try_acquire(self.chat_id, self.clock())
            try:
                await self._apply(op)
                return
            except RateLimited as exc:
                self.scheduler.on_flood(self.chat_id, exc.retry_after, self.clock())
                log.info(
                    "chat %s: rate limited for %.0f s; final text waits",
                    self.chat_id,
                    exc.retry_after,
                )
            except ChannelError as exc:
                if op.is_send or not resend:
                    raise
                # The message cannot be edited (deleted by the chatter?): the text
                # still lands, as a new message in its place.
                log.warning("chat %s: final edit failed (%s); sending anew", self.chat_id, exc)
                op = _Op(op.index, op.text, is_send=True, replaces=True)
        raise ChannelError(f"gave up after {FINAL_ATTEMPTS} rate limits", chat_id=self.chat_id)

    async def _apply(self, op: _Op) -> None:
        if op.is_send:
            message_id = await self.channel.send(self.chat_id, op.text)
            if op.replaces:
                self.message_ids[op.index], self.shown[op.index] = message_id, op.text
            else:
                self.message_ids.append(message_id)
                self.shown.append(op.text)
            self.sends += 1
            if self.first_visible_at is None:
                self.first_visible_at = self.clock()
        else:
            await self.channel.edit(self.chat_id, self.message_ids[op.index], op.text)
            self.shown[op.index] = op.text
            self.edits += 1


def _default_clock() -> Clock:
    try:
        return asyncio.get_running_loop().time  # virtual under a virtual-time loop
    except RuntimeError:
        return time.monotonic
