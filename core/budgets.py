"""Token budgets and the per-user rate limit: checked before the model is called.

Spent tokens are sums over the ``usage`` table (prompt + completion) for the
current day and month in ``VIGIL_TIMEZONE`` (the system's zone when unset);
one indexed range query per check (``usage_user_at``), nothing cached, so a
user passes the limit by at most the turn that crossed it. Per-user overrides
live in the ``budgets`` table (``vigilctl budget set``); the one-time notices
(the user's 80 % heads-up) in ``budget_notices``. The admin is exempt.

:meth:`Budgets.remaining` is what ``/usage`` shows as the remaining budget.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import re
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.channel import ADMIN_USER
from core.errors import BudgetExceeded, StorageError, UserRateLimited

if TYPE_CHECKING:
    from core.config import Settings
    from core.database import Database

log = logging.getLogger(__name__)

ADMIN = ADMIN_USER
HEADS_UP = 80  # percent of a budget at which the user is told once per period
USER_RE = re.compile(r"^(tg:-?[0-9]{1,20}|api:.{1,64}|admin)$", re.DOTALL)

# (today, this month) of one user: a range scan of the index usage_user_at
SPENT_SQL = (
    "SELECT COALESCE(SUM(CASE WHEN at >= ? THEN prompt_tokens + completion_tokens"
    " ELSE 0 END), 0) AS day, COALESCE(SUM(prompt_tokens + completion_tokens), 0)"
    " AS month FROM usage WHERE user_id = ? AND at >= ? AND at < ?"
)


def spent_params(user_id: str, periods: Periods) -> tuple[float, str, float, float]:
    return (periods.day_start, user_id, periods.month_start, periods.month_end)


# (key, active, alert_type, severity, message, action): monitoring's ``condition``.
AlertHook = Callable[..., Awaitable[None]]


def parse_user(text: str) -> str:
    """``tg:123``, a bare number (a Telegram user) or ``api:alice``; ValueError otherwise."""
    value = text.strip()
    if re.fullmatch(r"-?[0-9]{1,20}", value):
        return "tg:" + value.lstrip("+")
    if USER_RE.match(value) and value == value.strip() and "\n" not in value:
        return value
    raise ValueError(
        f"not a user: {text[:80]!r} (use tg:<Telegram user id>, a bare Telegram id, "
        'or api:<name> as the local API\'s "user" field)'
    )


def zone_of(name: str | None) -> dt.tzinfo | None:
    """The budget periods' zone; None: the system's local zone."""
    return zoneinfo.ZoneInfo(name) if name else None


@dataclass(frozen=True)
class Periods:
    """The current day and month in the budget zone, as epoch seconds."""

    day_start: float
    day_end: float
    month_start: float
    month_end: float
    day: str  # 2026-12-04
    month: str  # 2026-12

    @classmethod
    def at(cls, now: float, tz: dt.tzinfo | None) -> Periods:
        local = dt.datetime.fromtimestamp(now, tz)
        today = local.date()
        tomorrow = today + dt.timedelta(days=1)
        first = today.replace(day=1)
        next_first = (first + dt.timedelta(days=32)).replace(day=1)

        def start(day: dt.date) -> float:
            return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()

        return cls(
            start(today),
            start(tomorrow),
            start(first),
            start(next_first),
            today.isoformat(),
            first.isoformat()[:7],
        )


def iso(at: float, tz: dt.tzinfo | None) -> str:
    return dt.datetime.fromtimestamp(at, tz).astimezone(tz).isoformat(timespec="seconds")


def shown(at: float, tz: dt.tzinfo | None) -> str:
    local = dt.datetime.fromtimestamp(at, tz).astimezone(tz)
    zone = local.tzname() or ""
    return f"{local:%Y-%m-%d %H:%M} {zone}".strip()


@dataclass(frozen=True)
class Limits:
    day: int  # 0: unlimited
    month: int
    overridden: bool = False


class Budgets:
    """Token budgets of one instance (one per server, on its database)."""

    def __init__(
        self,
        db: Database,
        *,
        user_day: int = 0,
        user_month: int = 0,
        total_day: int = 0,
        tz: dt.tzinfo | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.user_day = user_day
        self.user_month = user_month
        self.total_day = total_day
        self.tz = tz
        self.clock = clock
        # Usage rows recorded but not yet written (``UsageRecorder.pending``: at,
        # chat, user, kind, model, prompt, completion, ...): counted as spent.
        self.pending: Callable[[], Sequence[Sequence[Any]]] = tuple
        self.refusals = 0  # vigil_budget_refusals_total (polled by the counter buffer)
        self.alert: AlertHook | None = None  # monitoring's condition(), set by its starter
        self._noticed: set[tuple[str, str, int]] = set()  # saves a write per turn past 80 %

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Budgets:
        return cls(
            db,
            user_day=settings.budget_user_tokens_day,
            user_month=settings.budget_user_tokens_month,
            total_day=settings.budget_total_tokens_day,
            tz=zone_of(settings.timezone),
        )

    # --- reading ----------------------------------------------------------------
    async def limits(self, user_id: str) -> Limits:
        row = await self.db.fetchone(
            "SELECT day_tokens, month_tokens FROM budgets WHERE user_id = ?", (user_id,)
        )
        if row is None:
            return Limits(self.user_day, self.user_month)
        day, month = row["day_tokens"], row["month_tokens"]
        return Limits(
            self.user_day if day is None else int(day),
            self.user_month if month is None else int(month),
            overridden=True,
        )

    async def applies(self, user_id: str) -> bool:
        """Whether ``user_id`` has a daily or monthly budget (the admin never has)."""
        if user_id == ADMIN:
            return False
        if self.user_day or self.user_month:
            return True
        limits = await self.limits(user_id)
        return bool(limits.day or limits.month)

    async def spent(self, user_id: str, periods: Periods) -> tuple[int, int]:
        """(today, this month) tokens of ``user_id``: one range scan of usage_user_at.

        The unwritten rows are taken before the query: a batch committed while it
        runs is then counted twice at worst, never missed.
        """
        unwritten = list(self.pending())
        row = await self.db.fetchone(SPENT_SQL, spent_params(user_id, periods))
        day, month = (int(row["day"]), int(row["month"])) if row is not None else (0, 0)
        for at, _chat, user, _kind, _model, prompt, completion, *_ in unwritten:
            if user == user_id and periods.month_start <= at < periods.month_end:
                month += prompt + completion
                if at >= periods.day_start:
                    day += prompt + completion
        return day, month

    async def spent_total(self, periods: Periods) -> int:
        rows = list(self.pending())  # before the query, as in spent()
        value = await self.db.scalar(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage"
            " WHERE at >= ? AND at < ?",
            (periods.day_start, periods.day_end),
        )
        unwritten = sum(
            row[5] + row[6] for row in rows if periods.day_start <= row[0] < periods.day_end
        )
        return int(value or 0) + unwritten

    async def remaining(self, user_id: str) -> dict[str, Any]:
        """What ``/usage`` shows: limits, spent and left per period (None: unlimited)."""
        periods = Periods.at(self.clock(), self.tz)
        if user_id == ADMIN:
            limits = Limits(0, 0)
        else:
            limits = await self.limits(user_id)
        day, month = await self.spent(user_id, periods)

        def one(limit: int, used: int, resets: float) -> dict[str, Any]:
            return {
                "limit": limit or None,
                "spent": used,
                "remaining": max(0, limit - used) if limit else None,
                "resets_at": iso(resets, self.tz),
            }

        return {
            "user": user_id,
            "exempt": user_id == ADMIN,
            "day": one(limits.day, day, periods.day_end),
            "month": one(limits.month, month, periods.month_end),
        }

    # --- the check before a turn ----------------------------------------------------
    async def check(self, user_id: str) -> str | None:
        """Raise BudgetExceeded when ``user_id`` may not start a turn now.

        Returns a one-time heads-up for the user (80 % of a budget) or None.
        The total budget is watched on every turn (the admin's too) for the
        operator's alerts; only other users are refused by it.
        """
        if not (self.total_day or self.user_day or self.user_month) and user_id == ADMIN:
            return None
        periods = Periods.at(self.clock(), self.tz)
        if self.total_day:
            await self._check_total(periods, refuse=user_id != ADMIN)
        if user_id == ADMIN:
            return None
        limits = await self.limits(user_id)
        if not (limits.day or limits.month):
            return None
        day, month = await self.spent(user_id, periods)
        for name, limit, used, end in (
            ("daily", limits.day, day, periods.day_end),
            ("monthly", limits.month, month, periods.month_end),
        ):
            if limit and used >= limit:
                self.refusals += 1
                log.info("user %s refused: %s budget of %d tokens used up", user_id, name, limit)
                raise BudgetExceeded(
                    f"You have used your {name} budget of {limit:,} tokens. "
                    f"It resets at {shown(end, self.tz)}.",
                    resets_at=iso(end, self.tz),
                    period="day" if name == "daily" else "month",
                    limit=limit,
                )
        for name, limit, used, end, period in (
            ("daily", limits.day, day, periods.day_end, periods.day),
            ("monthly", limits.month, month, periods.month_end, periods.month),
        ):
            if limit and used * 100 >= limit * HEADS_UP:
                scope = f"{user_id}:{'day' if name == 'daily' else 'month'}"
                if await self._first_notice(scope, period, HEADS_UP):
                    return (
                        f"ℹ️ Heads-up: you have used {used * 100 // limit} % of your {name} "
                        f"budget of {limit:,} tokens; it resets at {shown(end, self.tz)}."
                    )
        return None

    async def _check_total(self, periods: Periods, *, refuse: bool) -> None:
        limit = self.total_day
        used = await self.spent_total(periods)
        percent = used * 100 / limit
        await self._total_alert(
            "budget_total_80",
            percent >= HEADS_UP,
            "medium",
            f"{percent:.0f} % of the instance's daily token budget ({limit:,}) used today",
        )
        await self._total_alert(
            "budget_total_exceeded",
            used >= limit,
            "high",
            f"the instance's daily token budget ({limit:,}) is used up; users are refused "
            f"until {shown(periods.day_end, self.tz)}",
        )
        if refuse and used >= limit:
            self.refusals += 1
            raise BudgetExceeded(
                f"This assistant has used its daily budget of {limit:,} tokens for everyone. "
                f"It resets at {shown(periods.day_end, self.tz)}.",
                resets_at=iso(periods.day_end, self.tz),
                period="total_day",
                limit=limit,
            )

    async def _total_alert(self, alert_type: str, active: bool, severity: str, text: str) -> None:
        if self.alert is None:
            return
        try:
            await self.alert(
                alert_type,
                active,
                alert_type=alert_type,
                severity=severity,
                message=text,
                action="raise VIGIL_BUDGET_TOTAL_TOKENS_DAY, or wait for the next day",
            )
        except Exception:  # an alert that failed must not refuse or break a turn
            log.exception("could not raise the %s alert", alert_type)

    async def _first_notice(self, scope: str, period: str, level: int) -> bool:
        """Record a notice; True only the first time for this scope, period and level."""
        key = (scope, period, level)
        if key in self._noticed:
            return False
        if len(self._noticed) > 100_000:
            self._noticed.clear()
        self._noticed.add(key)
        try:
            async with self.db.transaction() as tx:
                cursor = await tx.execute(
                    "INSERT OR IGNORE INTO budget_notices (scope, period, level, at)"
                    " VALUES (?, ?, ?, ?)",
                    (scope, period, level, self.clock()),
                )
                return bool(cursor.rowcount)
        except StorageError as exc:  # a notice not recorded must not fail the turn
            log.warning("could not record the budget notice for %s: %s", scope, exc)
            return False

    # --- operator overrides (the CLI) -------------------------------------------------
    async def set_override(self, user_id: str, day: int | None, month: int | None) -> None:
        await self.db.write(
            "INSERT INTO budgets (user_id, day_tokens, month_tokens, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " day_tokens = COALESCE(excluded.day_tokens, day_tokens),"
            " month_tokens = COALESCE(excluded.month_tokens, month_tokens),"
            " updated_at = excluded.updated_at",
            (user_id, day, month, time.time()),
        )

    async def clear_override(self, user_id: str) -> bool:
        async with self.db.transaction() as tx:
            cursor = await tx.execute("DELETE FROM budgets WHERE user_id = ?", (user_id,))
            return bool(cursor.rowcount)

    async def overrides(self) -> list[str]:
        rows = await self.db.fetchall("SELECT user_id FROM budgets ORDER BY user_id")
        return [str(r["user_id"]) for r in rows]


class RateLimiter:
    """At most ``per_min`` messages per user in any 60 s (sliding window); 0: off."""

    def __init__(self, per_min: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_min = per_min
        self.clock = clock
        self._seen: dict[str, collections.deque[float]] = {}
        self.refusals = 0

    def hit(self, user_id: str) -> None:
        """Count one message of ``user_id``; raise UserRateLimited when over the limit."""
        if not self.per_min or user_id == ADMIN:
            return
        now = self.clock()
        seen = self._seen.setdefault(user_id, collections.deque())
        while seen and seen[0] <= now - 60.0:
            seen.popleft()
        if len(seen) >= self.per_min:
            wait = max(1.0, math.ceil(seen[0] + 60.0 - now))
            self.refusals += 1
            raise UserRateLimited(
                f"You are sending messages too fast (limit {self.per_min} a minute). "
                f"Please wait {wait:.0f} s and try again.",
                retry_after=wait,
                limit=self.per_min,
            )
        seen.append(now)
        if len(self._seen) > 10_000:  # forget users idle for a minute
            for key in [k for k, q in self._seen.items() if not q or q[-1] <= now - 60.0]:
                del self._seen[key]
