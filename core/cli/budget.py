"""Per-user token budget overrides: ``budget set|show|clear``.

Writes the ``budgets`` table of ``system.db`` directly; a running server
reads it at each turn, so a change applies from the next message.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import typer

from core.budgets import SPENT_SQL, Periods, parse_user, spent_params, zone_of
from core.cli.output import JSON_OPT, cli_settings, fail, guarded, print_json, require_db
from core.config import MAX_TOKENS_SETTING, Settings
from core.database import connect_sync
from core.errors import BadRequest

group = typer.Typer(help="Per-user token budgets (overrides of VIGIL_BUDGET_USER_TOKENS_*).")
USER_HELP = "tg:<Telegram user id>, a bare Telegram id, or api:<name> (the local API's user)."


def _user(text: str) -> str:
    try:
        user = parse_user(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if user == "admin":
        raise BadRequest("the admin is exempt from budgets; name a tg: or api: user")
    return user


def _tokens(value: int | None, name: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_TOKENS_SETTING:
        raise BadRequest(f"{name} must be a number of tokens >= 0 (0: unlimited), got {value}")
    return value


def _connect(settings: Settings) -> sqlite3.Connection:
    require_db(settings)
    conn = connect_sync(settings.db_path, create=False)
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'budgets'"
    ).fetchone():
        conn.close()
        fail("this database has no budgets table yet: start the server once to upgrade it")
    return conn


def _shown(limit: int) -> str:
    return "unlimited" if not limit else f"{limit:,}"


def _user_view(conn: sqlite3.Connection, settings: Settings, user: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT day_tokens, month_tokens FROM budgets WHERE user_id = ?", (user,)
    ).fetchone()
    day = settings.budget_user_tokens_day
    month = settings.budget_user_tokens_month
    if row is not None:
        day = day if row["day_tokens"] is None else int(row["day_tokens"])
        month = month if row["month_tokens"] is None else int(row["month_tokens"])
    periods = Periods.at(time.time(), zone_of(settings.timezone))
    spent = conn.execute(SPENT_SQL, spent_params(user, periods)).fetchone()
    used_day, used_month = int(spent["day"]), int(spent["month"])
    return {
        "user": user,
        "override": None
        if row is None
        else {"day": row["day_tokens"], "month": row["month_tokens"]},
        "day": {
            "limit": day or None,
            "spent": used_day,
            "remaining": max(0, day - used_day) if day else None,
        },
        "month": {
            "limit": month or None,
            "spent": used_month,
            "remaining": max(0, month - used_month) if month else None,
        },
    }


def _line(view: dict[str, Any]) -> str:
    parts = []
    for period in ("day", "month"):
        one = view[period]
        left = "" if one["limit"] is None else f", {one['remaining']:,} left"
        parts.append(f"{period}: {one['spent']:,} of {_shown(one['limit'] or 0)}{left}")
    source = "override" if view["override"] is not None else "defaults"
    return f"{view['user']} ({source}) " + "; ".join(parts)


@group.command("set")
@guarded
def set_budget(
    user: str = typer.Argument(..., help=USER_HELP),
    day: int | None = typer.Option(None, "--day", help="Tokens per day (0: unlimited)."),
    month: int | None = typer.Option(None, "--month", help="Tokens per month (0: unlimited)."),
) -> None:
    """Give one user their own daily and/or monthly token budget."""
    who = _user(user)
    if day is None and month is None:
        raise BadRequest("give --day N and/or --month N (0: unlimited)")
    _tokens(day, "--day")
    _tokens(month, "--month")
    settings = cli_settings()
    conn = _connect(settings)
    try:
        conn.execute(
            "INSERT INTO budgets (user_id, day_tokens, month_tokens, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " day_tokens = COALESCE(excluded.day_tokens, day_tokens),"
            " month_tokens = COALESCE(excluded.month_tokens, month_tokens),"
            " updated_at = excluded.updated_at",
            (who, day, month, time.time()),
        )
        typer.echo("set: " + _line(_user_view(conn, settings, who)))
    finally:
        conn.close()


@group.command("show")
@guarded
def show(
    user: str | None = typer.Argument(None, help=USER_HELP + " Without it: every override."),
    as_json: bool = JSON_OPT,
) -> None:
    """One user's budgets, spent and remaining tokens; or the defaults and all overrides."""
    settings = cli_settings()
    who = _user(user) if user is not None else None
    conn = _connect(settings)
    try:
        if who is not None:
            view = _user_view(conn, settings, who)
            if as_json:
                print_json(view)
            else:
                typer.echo(_line(view))
            return
        users = [
            str(r["user_id"])
            for r in conn.execute("SELECT user_id FROM budgets ORDER BY user_id").fetchall()
        ]
        views = [_user_view(conn, settings, u) for u in users]
    finally:
        conn.close()
    defaults: dict[str, Any] = {
        "user_day": settings.budget_user_tokens_day,
        "user_month": settings.budget_user_tokens_month,
        "total_day": settings.budget_total_tokens_day,
        "timezone": settings.timezone or "system",
    }
    if as_json:
        print_json({"defaults": defaults, "overrides": views})
        return
    typer.echo(
        f"defaults: user day {_shown(defaults['user_day'])}, user month "
        f"{_shown(defaults['user_month'])}, total day {_shown(defaults['total_day'])} "
        f"(periods in {defaults['timezone']} time)"
    )
    if not views:
        typer.echo("no per-user overrides (scripts/vigilctl budget set USER --day N)")
    for view in views:
        typer.echo(_line(view))


@group.command("clear")
@guarded
def clear(user: str = typer.Argument(..., help=USER_HELP)) -> None:
    """Remove one user's override: the defaults apply again."""
    who = _user(user)
    settings = cli_settings()
    conn = _connect(settings)
    try:
        gone = conn.execute("DELETE FROM budgets WHERE user_id = ?", (who,)).rowcount
    finally:
        conn.close()
    if not gone:
        fail(f"{who} has no budget override", 1)
    typer.echo(f"cleared: {who} has the default budgets again")


def register(cli: typer.Typer) -> None:
    """Add ``budget`` (set/show/clear) to main.py's app."""
    cli.add_typer(group, name="budget")
