"""EditScheduler: the edit budget and pacing shared by every streamed reply of a channel.

A token bucket of sends+edits per second across all chats, each chat's flood
penalty (a rate limit doubles its interval, halving again per quiet decay
period) and the count of streams in progress, from which the adaptive
per-chat interval follows. Every method takes ``now``: the decisions are pure
functions of this state and time, tested without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class _ChatPace:
    penalty: float = 1.0
    blocked_until: float = -math.inf
    flooded_at: float = -math.inf


class EditScheduler:
    """Edit pacing shared by every reply of one channel.

    ``edits_per_s`` is the global budget of sends+edits across all chats
    (a token bucket holding at most ``burst`` calls, by default a quarter
    second's worth, so no 1-second window sees more than 1.25 x the rate).
    Intermediate edits leave one call in the bucket for first messages and
    final texts, which therefore never queue behind them. The adaptive interval
    of a chat is ``max(base x flood penalty, active streams / edits_per_s)``:
    with many replies streaming at once each gets a fair share of the budget
    instead of all of them racing for it.
    """

    def __init__(
        self,
        *,
        edits_per_s: float = math.inf,
        burst: float | None = None,
        max_penalty: float = 8.0,
        penalty_decay_s: float = 60.0,
    ) -> None:
        self.rate = edits_per_s
        self.burst = burst if burst is not None else max(1.0, min(edits_per_s / 4, 1e9))
        self.max_penalty = max_penalty
        self.penalty_decay_s = penalty_decay_s
        self._tokens = self.burst
        self._refilled_at: float | None = None
        self._chats: dict[str, _ChatPace] = {}
        self._pruned_at = -math.inf
        self.active: dict[str, int] = {}
        self.calls = 0
        self.deferred = 0
        self.flood_waits = 0
        self.flood_wait_s = 0.0
        self.last_flood_at: float | None = None

    # --- pure decisions -------------------------------------------------------
    @property
    def active_streams(self) -> int:
        return sum(self.active.values())

    def interval(self, chat_id: str, base: float, now: float) -> float:
        pace = self._chats.get(chat_id)
        penalty = self._penalty(pace, now) if pace else 1.0
        share = self.active_streams / self.rate if math.isfinite(self.rate) else 0.0
        return max(base * penalty, share)

    def wait_time(self, chat_id: str, now: float, *, reserve: float = 0.0) -> float:
        """Seconds until this chat may make one more call (0: now).

        ``reserve`` calls must stay in the bucket afterwards (intermediate
        edits keep one back for first messages and final texts).
        """
        self._refill(now)
        pace = self._chats.get(chat_id)
        blocked = max(0.0, pace.blocked_until - now) if pace else 0.0
        need = 1.0 + min(reserve, max(0.0, self.burst - 1))
        budget = 0.0 if self._tokens >= need - 1e-9 else (need - self._tokens) / self.rate
        return max(blocked, budget)

    def _penalty(self, pace: _ChatPace, now: float) -> float:
        # The penalty halves for every quiet decay period since the last flood wait.
        if not math.isfinite(pace.flooded_at):
            return pace.penalty
        periods = min(64, math.floor(max(0.0, now - pace.flooded_at) / self.penalty_decay_s))
        return max(1.0, pace.penalty / 2**periods)

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None and math.isfinite(self.rate):
            self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self.rate)
        elif not math.isfinite(self.rate):
            self._tokens = self.burst
        self._refilled_at = now

    # --- state changes --------------------------------------------------------
    def try_acquire(self, chat_id: str, now: float, *, urgent: bool = True) -> bool:
        """Take one call from the budget if this chat may call now."""
        if self.wait_time(chat_id, now, reserve=0.0 if urgent else 1.0) > 0:
            self.deferred += 1
            return False
        self._tokens -= 1
        self.calls += 1
        return True

    def on_flood(self, chat_id: str, retry_after: float, now: float) -> None:
        pace = self._chats.setdefault(chat_id, _ChatPace())
        pace.penalty = min(self.max_penalty, self._penalty(pace, now) * 2)
        pace.blocked_until = max(pace.blocked_until, now + retry_after)
        pace.flooded_at = now
        self.flood_waits += 1
        self.flood_wait_s += retry_after
        self.last_flood_at = now

    def begin(self, chat_id: str) -> None:
        self.active[chat_id] = self.active.get(chat_id, 0) + 1

    def end(self, chat_id: str, now: float) -> None:
        left = self.active.get(chat_id, 0) - 1
        if left > 0:
            self.active[chat_id] = left
        else:
            self.active.pop(chat_id, None)
            pace = self._chats.get(chat_id)
            if pace is not None and self._settled(pace, now):
                del self._chats[chat_id]
        # A chat that was flooded once and then fell silent never ends another
        # stream, so the others sweep it out; at most once per decay period.
        if now - self._pruned_at >= self.penalty_decay_s:
            self.prune(now)

    def prune(self, now: float) -> int:
        """Forget the chats with no stream whose penalty has decayed; returns how many."""
        stale = [
            chat_id
            for chat_id, pace in self._chats.items()
            if chat_id not in self.active and self._settled(pace, now)
        ]
        for chat_id in stale:
            del self._chats[chat_id]
        self._pruned_at = now
        return len(stale)

    def _settled(self, pace: _ChatPace, now: float) -> bool:
        # Forgetting such a chat changes nothing: its pace is the default again.
        return self._penalty(pace, now) <= 1.0 and pace.blocked_until <= now

    @property
    def tracked_chats(self) -> int:
        """Chats with a flood penalty or block still remembered."""
        return len(self._chats)

    def penalty(self, chat_id: str, now: float) -> float:
        pace = self._chats.get(chat_id)
        return self._penalty(pace, now) if pace else 1.0
