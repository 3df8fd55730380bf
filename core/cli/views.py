"""What the operator commands show: status gathering, tables, summaries.

Kept apart from ``core/cli/commands.py`` (argument handling) so each stays small.
Nothing here opens the Telegram session; the server is asked over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from core.backups.backup import Snapshot
from core.backups.integrity import Check
from core.cli.output import clip, fmt_bytes, fmt_time, show_table
from core.config import Settings
from core.database import Database
from core.errors import LLMError, NotFound


def server_answers(settings: Settings) -> bool:
    """Does a Vigil server answer on the configured port (PID file or not)?"""
    try:
        return httpx.get(settings.base_url + "/health/live", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def admin_token(settings: Settings) -> str | None:
    """The token the running server expects: configured, else the one it generated
    (``data/admin_token``; never made here). None when neither is readable."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        return settings.admin_token.get_secret_value().strip()
    try:
        return settings.admin_token_file.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def render_snapshots(found: Sequence[Snapshot], states: dict[str, str]) -> None:
    columns = ["name", "created (UTC)", "kind", "size", "db size", "messages", "schema"]
    if states:
        columns.append("verify")
    rows = []
    for s in found:
        row = [
            f"{s.name} (manifest says {s.manifest_name})" if s.renamed else s.name,
            fmt_time(s.created_at),
            s.kind,
            fmt_bytes(s.size_bytes),
            fmt_bytes(s.db_bytes),
            s.messages,
            s.schema_version,
        ]
        if states:
            row.append(states.get(s.name, "-"))
        rows.append(row)
    show_table("Snapshots", columns, rows, empty="no snapshots yet")


def render_history(rows: list[dict[str, Any]], chat: str | None) -> None:
    if chat is None:
        show_table(
            "Chats",
            ("chat", "channel", "title", "messages", "updated"),
            [
                (r["id"], r["channel"], r["title"], r["message_count"], fmt_time(r["updated_at"]))
                for r in rows
            ],
            empty="no chats yet",
        )
        return
    show_table(
        f"History of {chat}",
        ("id", "when", "role", "author", "message"),
        [
            (r["id"], fmt_time(r["created_at"]), r["role"], r["author"], clip(r["content"], 100))
            for r in rows
        ],
        empty="no messages",
    )


def render_search(hits: list[dict[str, Any]], query: str) -> None:
    show_table(
        f"Search: {query}",
        ("id", "chat", "when", "role", "snippet"),
        [
            (h["id"], h["chat_id"], fmt_time(h["created_at"]), h["role"], clip(h["snippet"], 100))
            for h in hits
        ],
        empty="no matches",
    )


def render_validate(path: Path, checks: Sequence[Check], *, repaired: bool) -> None:
    marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
    title = f"validate {path}" + (" (search index rebuilt first)" if repaired else "")
    show_table(
        title, ("check", "result", "detail"), [(c.name, marks[c.status], c.detail) for c in checks]
    )


async def summarize_chat(
    settings: Settings, chat: str | None, count: int, *, use_model: bool
) -> dict[str, Any]:
    """Summary of a chat's last ``count`` messages: the model's, else extractive."""
    from core.context import extractive_summary
    from core.llm import llm_from_settings
    from core.memory import ChatMemory, estimate_tokens

    db = Database(settings.db_path, readers=1)
    await db.open()
    try:
        memory = ChatMemory(db)
        if chat is None:
            latest = await memory.chats(limit=1)
            if not latest:
                raise NotFound("no chats yet: nothing to summarise")
            chat = str(latest[0]["id"])
        await memory.chat(chat)
        turns = list(reversed(await memory.history(chat, limit=count)))
    finally:
        await db.close()
    text = extractive_summary(
        "", turns, max_tokens=settings.context_summary_max_tokens, estimate=estimate_tokens
    )
    result = {"chat_id": chat, "messages": len(turns), "source": "extractive", "summary": text}
    if not use_model or not turns:
        return result
    llm = llm_from_settings(settings, max_retries=0)
    try:
        if (await llm.probe()).state == "ok":
            result["summary"] = (
                await llm.summarize(
                    "Summarise this conversation in a few sentences: names, facts, decisions, "
                    "open questions. Reply with the summary only.\n\n" + text
                )
            ).strip() or text
            result["source"] = "model"
        else:
            result["source"] = f"extractive (model {llm.status.state})"
    except LLMError as exc:
        result["source"] = f"extractive (model failed: {exc.message})"
    finally:
        await llm.aclose()
    result["generated_at"] = time.time()
    return result
