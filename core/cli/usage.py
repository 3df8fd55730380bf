"""``usage``: tokens per user and per day, as a Rich table or JSON.

Reads ``system.db`` directly (read-only), so it works with the server running or
stopped. A running server writes its usage rows every
``VIGIL_METRICS_FLUSH_INTERVAL_S`` (5 s): the last few seconds may be missing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer

from core import usage
from core.cli.output import (
    JSON_OPT,
    cli_settings,
    fmt_time,
    guarded,
    print_json,
    require_db,
    show_table,
)
from core.errors import BadRequest
from core.sqlite import connect_sync


def _chat(chat: str | None) -> str | None:
    if chat is None:
        return None
    from core.api import stored_chat_id
    from core.errors import InvalidChatId

    try:
        return stored_chat_id(chat)
    except InvalidChatId as exc:
        raise BadRequest(f"--chat: {exc.message}") from None


def _cost(entry: dict[str, Any]) -> str:
    return f"{entry['cost']:.4f}" if "cost" in entry else "-"


@guarded
def usage_command(
    user: str | None = typer.Option(
        None, "--user", help="Only this user id: tg:123456, api:ada or admin."
    ),
    chat: str | None = typer.Option(None, "--chat", help="Only this chat (local id or tg:123)."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="7d, 24h, 30m, 2w, a date (2026-12-01, UTC) or an ISO time; default 30d.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Model tokens per user and per day (and the cost, when prices are set)."""
    try:
        start = usage.parse_since(since)
    except ValueError as exc:
        raise BadRequest(f"--{exc}") from None
    try:
        who = usage.check_user(user)
    except ValueError as exc:
        raise BadRequest(f"--{exc}") from None
    chat_id = _chat(chat)
    settings = cli_settings()
    require_db(settings)
    conn = connect_sync(settings.db_path, readonly=True)
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
        ).fetchone():
            raise BadRequest(
                "this database has no usage table yet: start the server once to upgrade it"
            )
        report = asyncio.run(
            usage.summary(
                usage.FileReader(conn),
                since=start,
                user=who,
                chat=chat_id,
                prices=usage.prices_from(settings),
            )
        )
    finally:
        conn.close()
    if as_json:
        print_json(report)
        return
    columns = ["user", "requests", "prompt", "completion", "total", "estimated", "cost"]
    priced = report["prices_set"]
    if not priced:
        columns.pop()

    def row(name: str, entry: dict[str, Any]) -> list[Any]:
        cells = [
            name,
            entry["requests"],
            entry["prompt_tokens"],
            entry["completion_tokens"],
            entry["total_tokens"],
            entry["estimated_requests"],
        ]
        return [*cells, _cost(entry)] if priced else cells

    title = f"Usage since {fmt_time(start)}"
    show_table(
        title,
        columns,
        [row(u["user"] or "-", u) for u in report["users"]] + [row("total", report["total"])],
        empty="no model calls",
    )
    columns[0] = "day (UTC)"
    show_table("Per day", columns, [row(d["day"], d) for d in report["days"]], empty="none")


def register(cli: typer.Typer) -> None:
    """Add ``usage`` to main.py's app."""
    cli.command("usage")(usage_command)
