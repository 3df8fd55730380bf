"""The operator commands of ``python main.py``.

status, backup, restore, snapshots, history, search, summarize, cleanup,
validate, export. They work with the server running (WAL readers, short write
transactions) or stopped, never open the Telegram session, print a Rich table
or ``--json``, and fail with one line and a non-zero exit. ``register(cli)``
adds them to main.py's Typer app; main.py passes the Huey queue depth for
``status`` to it (``core/`` does not import ``tasks/``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from core import maintenance
from core.cli.backup import backup, cleanup, restore_cmd, snapshots, validate
from core.cli.output import (
    JSON_OPT,
    check_limit,
    cli_settings,
    fail,
    guarded,
    print_json,
    progress_bar,
    require_db,
    user_path,
)
from core.cli.status import gather_status, render_status
from core.cli.views import render_history, render_search
from core.config import Settings
from core.database import Database, connect_sync
from core.errors import BadRequest
from core.memory import ROLES, ChatMemory, fts_query

QueueDepth = Callable[[Settings], dict[str, Any]]


async def _with_memory(settings: Settings, work: Callable[[ChatMemory], Any]) -> Any:
    db = Database(settings.db_path, readers=1)
    await db.open()
    try:
        return await work(ChatMemory(db))
    finally:
        await db.close()


def status_command(queue_depth: QueueDepth | None) -> Callable[..., None]:
    """The ``status`` command, reading the task queue's depth with ``queue_depth``."""

    @guarded
    def status(as_json: bool = JSON_OPT) -> None:
        """At a glance, worst first: alerts, emergency mode, throttling, maintenance,
        backups, children, Telegram, restarts (planned stops apart), queue, database."""
        settings = cli_settings()
        report = gather_status(settings, queue_depth)
        print_json(report) if as_json else render_status(report)

    return status


CHAT_HELP = "Chat id as `history` lists it (local:NAME, tg:ID); a bare API name works too."


def resolve_chat(settings: Settings, given: str | None) -> str | None:
    """The stored id of ``--chat``: as given, or the API chat ``alice`` as ``local:alice``
    (a bare number also as the Telegram chat ``tg:N``). An unknown chat is one line, exit 1:
    never an empty answer that looks like "no messages"."""
    if given is None:
        return None
    candidates = [given]
    if ":" not in given:
        candidates.append(f"local:{given}")
        if given.lstrip("-").isdigit():
            candidates.append(f"tg:{given}")
    conn = connect_sync(settings.db_path, readonly=True)
    try:
        found = [
            c
            for c in candidates
            if conn.execute("SELECT 1 FROM chats WHERE id = ?", (c,)).fetchone()
        ]
    finally:
        conn.close()
    if given in found:
        return given
    if len(found) == 1:
        return found[0]
    if found:
        fail(f"--chat {given!r} is ambiguous: say {' or '.join(found)}", 2)
    fail(
        f"no chat with id {given!r} (ids are local:NAME for API chats, tg:ID for Telegram; "
        "list them with: scripts/vigilctl history)"
    )


@guarded
def history(
    chat: str | None = typer.Option(None, "--chat", help=CHAT_HELP + " Without it, list chats."),
    limit: int = typer.Option(20, "--limit", help="How many rows."),
    role: str | None = typer.Option(None, "--role", help="user, assistant or system."),
    as_json: bool = JSON_OPT,
) -> None:
    """A chat's recent messages (or the list of chats)."""
    settings = cli_settings()
    require_db(settings)
    check_limit(limit)
    if role is not None and role not in ROLES:
        raise BadRequest(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if role is not None and chat is None:
        raise BadRequest(
            "--role filters one chat's messages: add --chat ID (without it, "
            "history lists the chats, --limit of them)"
        )
    chat = resolve_chat(settings, chat)

    async def work(memory: ChatMemory) -> Any:
        if chat is None:
            return await memory.chats(limit=limit)
        await memory.chat(chat)  # NotFound names the chat
        turns = await memory.history(chat, limit=limit, role=role)
        return [_turn_dict(t) for t in reversed(turns)]

    rows = asyncio.run(_with_memory(settings, work))
    print_json(rows) if as_json else render_history(rows, chat)


def _turn_dict(turn: Any) -> dict[str, Any]:
    fields = ("id", "chat_id", "role", "content", "tokens", "created_at", "author", "external_id")
    return {f: getattr(turn, f) for f in fields}


@guarded
def search(
    query: str = typer.Argument(..., help="Words to find (any text is safe)."),
    limit: int = typer.Option(20, "--limit", help="How many hits."),
    chat: str | None = typer.Option(None, "--chat", help="Only this chat. " + CHAT_HELP),
    as_json: bool = JSON_OPT,
) -> None:
    """Full-text search over every message."""
    settings = cli_settings()
    require_db(settings)
    check_limit(limit, top=1000)
    if fts_query(query) is None:
        raise BadRequest("the query has no searchable words")
    chat = resolve_chat(settings, chat)

    async def work(memory: ChatMemory) -> Any:
        hits = await memory.search(query, limit=limit, chat_id=chat)
        return [{**_turn_dict(h.turn), "snippet": h.snippet, "rank": h.rank} for h in hits]

    hits = asyncio.run(_with_memory(settings, work))
    print_json(hits) if as_json else render_search(hits, query)


@guarded
def summarize(
    chat: str | None = typer.Option(
        None, "--chat", help="Default: the latest active chat. " + CHAT_HELP
    ),
    count: int = typer.Option(50, "--count", help="How many recent messages."),
    extractive: bool = typer.Option(False, "--extractive", help="Do not ask the model."),
    as_json: bool = JSON_OPT,
) -> None:
    """Summarise a chat's recent messages (the model if reachable, else extractive)."""
    from core.cli.views import summarize_chat

    settings = cli_settings()
    require_db(settings)
    check_limit(count, "--count", top=1000)
    chat = resolve_chat(settings, chat)
    result = asyncio.run(summarize_chat(settings, chat, count, use_model=not extractive))
    if as_json:
        print_json(result)
        return
    typer.echo(f"chat {result['chat_id']}: {result['messages']} messages ({result['source']})")
    typer.echo(result["summary"])


@guarded
def export(
    chat: str | None = typer.Option(None, "--chat", help="Only this chat. " + CHAT_HELP),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to FILE (default stdout)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE."),
) -> None:
    """Messages as JSON lines, oldest first."""
    settings = cli_settings()
    require_db(settings)
    output = user_path(output)
    if output is not None and output.exists() and not force:
        raise BadRequest(f"{output} already exists; add --force to overwrite it")
    chat = resolve_chat(settings, chat)
    conn = connect_sync(settings.db_path, readonly=True)
    try:
        total = maintenance.count_messages(conn, chat_id=chat)
        rows = maintenance.iter_messages(conn, chat_id=chat)
        if output is None:
            for row in rows:
                typer.echo(json.dumps(row, ensure_ascii=False))
            return
        written = _export_file(output, rows, total)
    finally:
        conn.close()
    typer.echo(f"exported {written} message(s) to {output}", err=True)


def _export_file(output: Path, rows: Any, total: int) -> int:
    written = 0
    temp = output.with_name(f".{output.name}.tmp")
    with progress_bar() as progress, temp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
            if written % 1000 == 0:
                progress("export", written, total)
    temp.replace(output)
    return written


def register(cli: typer.Typer, *, queue_depth: QueueDepth | None = None) -> None:
    """Add the operator commands to main.py's Typer app.

    ``queue_depth(settings)`` reads the task queue for ``status``; without it,
    ``status`` shows no queue.
    """
    for name, command in (
        ("status", status_command(queue_depth)),
        ("backup", backup),
        ("restore", restore_cmd),
        ("snapshots", snapshots),
        ("history", history),
        ("search", search),
        ("summarize", summarize),
        ("cleanup", cleanup),
        ("validate", validate),
        ("export", export),
    ):
        cli.command(name)(command)
    from core.cli import config_view

    config_view.register(cli)  # config
