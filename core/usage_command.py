"""The ``/usage`` chat command: own tokens today and this month, the budget left;
``/usage all`` (the admin only): the top users today."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from core import usage
from core.budgets import Periods, shown
from core.channel import ADMIN_USER

if TYPE_CHECKING:
    from core.chat import ChatService

TOP_USERS = 10
ONLY_ADMIN = "Only the admin can see everyone's usage. /usage shows yours."


def _n(value: int) -> str:
    return f"{value:,}"


def _cost(cost: float | None) -> str:
    return "" if cost is None else f" (cost {cost:.4f})"


async def _flushed_periods(chat: ChatService) -> Periods:
    """Write the pending usage rows, then today's and this month's bounds in the budget zone."""
    await chat.usage.flush(chat.memory.db)
    budgets = chat.budgets
    tz = budgets.tz if budgets is not None else None
    now = budgets.clock() if budgets is not None else time.time()
    return Periods.at(now, tz)


async def own_usage(chat: ChatService, user: str) -> str:
    """The sender's own tokens today and this month, and the budget left."""
    db = chat.memory.db
    periods = await _flushed_periods(chat)
    day_p, day_c = await usage.user_totals(db, user, periods.day_start)
    month_p, month_c = await usage.user_totals(db, user, periods.month_start)
    prices = chat.usage.prices  # each profile's tokens at its own prices
    day_cost = await usage.user_cost(db, user, periods.day_start, prices)
    month_cost = await usage.user_cost(db, user, periods.month_start, prices)
    lines = [
        f"Your usage today: {_n(day_p + day_c)} tokens "
        f"({_n(day_p)} prompt, {_n(day_c)} completion){_cost(day_cost)}.",
        f"This month: {_n(month_p + month_c)} tokens "
        f"({_n(month_p)} prompt, {_n(month_c)} completion){_cost(month_cost)}.",
    ]
    lines.append(await remaining_budget_line(chat, user))
    return "\n".join(lines)


async def remaining_budget_line(chat: ChatService, user: str) -> str:
    """The budget part of ``/usage`` (core/budgets.py's ``Budgets.remaining``)."""
    if user == ADMIN_USER:
        return "You're the admin: no budget applies to you."
    if chat.budgets is None:
        return "No token budget is set."
    left = await chat.budgets.remaining(user)
    parts = []
    for period, name in (("day", "today"), ("month", "this month")):
        entry: dict[str, Any] = left[period]
        if entry["limit"] is None:
            parts.append(f"{name}: unlimited")
        else:
            resets = shown(_period_end(chat, period), chat.budgets.tz)
            parts.append(
                f"{name}: {_n(entry['remaining'])} of {_n(entry['limit'])} left (resets {resets})"
            )
    return "Budget " + "; ".join(parts) + "."


def _period_end(chat: ChatService, period: str) -> float:
    assert chat.budgets is not None
    periods = Periods.at(chat.budgets.clock(), chat.budgets.tz)
    return periods.day_end if period == "day" else periods.month_end


async def all_usage(chat: ChatService) -> str:
    """The top users today (``/usage all``)."""
    db = chat.memory.db
    periods = await _flushed_periods(chat)
    report = await usage.summary(db, since=periods.day_start, prices=chat.usage.prices)
    users = report["users"][:TOP_USERS]
    if not users:
        return "No model calls today."
    total = report["total"]
    lines = [
        f"Usage today: {_n(total['total_tokens'])} tokens in {_n(total['requests'])} calls"
        + (f" (cost {total['cost']:.4f})" if "cost" in total else "")
        + ". Top users:"
    ]
    for index, entry in enumerate(users, 1):
        cost = f", cost {entry['cost']:.4f}" if "cost" in entry else ""
        lines.append(
            f"{index}. {entry['user'] or '(worker)'}: {_n(entry['total_tokens'])} tokens, "
            f"{_n(entry['requests'])} calls{cost}"
        )
    return "\n".join(lines)
