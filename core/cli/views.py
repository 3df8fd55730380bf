"""What the operator commands show: status gathering, tables, summaries.

Kept apart from ``core/cli/commands.py`` (argument handling) so each stays small.
Nothing here opens the Telegram session; the server is asked over HTTP.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from core.backups.backup import Snapshot, list_snapshots
from core.backups.integrity import Check
from core.cli.output import clip, fmt_age, fmt_bytes, fmt_time, show_table
from core.config import Settings
from core.database import Database, connect_sync
from core.errors import LLMError, NotFound
from core.maintenance import database_summary
from core.process import pid_alive as server_pid_alive
from core.process import server_pid
from core.restarts import read_supervisor_state


def _get_json(url: str, timeout: float = 2.0) -> Any:
    try:
        response = httpx.get(url, timeout=timeout)
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


def server_answers(settings: Settings) -> bool:
    """Does a Vigil server answer on the configured port (PID file or not)?"""
    try:
        return httpx.get(settings.base_url + "/health/live", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def gather_status(
    settings: Settings, queue_depth: Callable[[Settings], dict[str, Any]] | None
) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able dict (never raises for a part)."""
    health = _get_json(settings.base_url + "/health")
    pid = server_pid(settings.pid_file)
    state = "running" if health else ("not answering" if pid else "not running")
    report: dict[str, Any] = {
        "server": {"state": state, "pid": pid, "url": settings.base_url, "health": health},
        "supervisor": _supervisor(settings),
        "resources": _get_json(settings.base_url + "/resources/status") if health else None,
        "queue": queue_depth(settings) if queue_depth else None,
    }
    db_path = settings.db_path
    if db_path.is_file():
        try:
            conn = connect_sync(db_path, readonly=True)
            try:
                report["database"] = database_summary(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:  # status must still show everything else
            report["database"] = {"error": f"unreadable: {exc} (run validate)"}
        report["database"]["path"] = str(db_path)
        report["database"]["size_bytes"] = db_path.stat().st_size
        wal = Path(f"{db_path}-wal")
        report["database"]["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    else:
        report["database"] = {"path": str(db_path), "error": "no database file"}
    snaps = list_snapshots(settings.backups_dir)
    report["backups"] = {
        "count": len(snaps),
        "latest": snaps[0].to_dict() if snaps else None,
        "total_bytes": sum(s.size_bytes for s in snaps),
    }
    return report


def _supervisor(settings: Settings) -> dict[str, Any]:
    """The supervisor's state file, trusted only while its process lives."""
    state = read_supervisor_state(settings.data_dir, parent_pid=-1)
    pid = state.get("pid")
    running = isinstance(pid, int) and not state.get("stopped") and server_pid_alive(pid)
    children = {
        name: {k: child.get(k) for k in ("state", "pid", "restarts_in_window", "last_exit")}
        for name, child in (state.get("children") or {}).items()
        if isinstance(child, dict)
    }
    return {"running": running, "pid": pid if running else None, "children": children}


def _children_line(supervisor: dict[str, Any]) -> str:
    if not supervisor["running"]:
        return "supervisor not running"
    parts = [
        f"{name} {child['state']}" + (f" (pid {child['pid']})" if child.get("pid") else "")
        for name, child in supervisor["children"].items()
    ]
    return f"supervisor pid {supervisor['pid']}: " + (", ".join(parts) or "no children")


def _resources_line(resources: Any) -> str:
    if not isinstance(resources, dict):
        return "unavailable"
    try:
        return _resources_summary(resources)
    except (TypeError, ValueError, AttributeError):  # another version's shape: say little
        return "answered"


def _resources_summary(resources: dict[str, Any]) -> str:
    health = resources.get("health", resources)
    current = health.get("current_resources", {}) if isinstance(health, dict) else {}
    parts = []
    if "health_score" in health:
        parts.append(f"score {health['health_score']:.0f}")
    for key, label in (("memory_mb", "MB"), ("cpu_percent", "% CPU")):
        if key in current:
            parts.append(f"{current[key]:.0f} {label}")
    if "active_sessions" in current:
        parts.append(f"{current['active_sessions']} sessions")
    return ", ".join(parts) or "answered"


def render_status(report: dict[str, Any]) -> None:
    server, db, queue = report["server"], report["database"], report["queue"]
    health = server["health"] or {}
    rows: list[tuple[str, str]] = [
        ("server", f"{server['state']}" + (f" (pid {server['pid']})" if server["pid"] else "")),
        ("processes", _children_line(report["supervisor"])),
        ("health", str(health.get("status", "-")) + _health_detail(health)),
        ("resources", _resources_line(report["resources"]) if server["health"] else "-"),
    ]
    if "error" in db:
        rows.append(("database", db["error"]))
    else:
        rows += [
            (
                "database",
                f"{fmt_bytes(db['size_bytes'])} (+{fmt_bytes(db['wal_bytes'])} WAL), "
                f"schema {db['schema_version']}",
            ),
            (
                "messages",
                f"{db['messages']} in {db['chats']} chats, last {fmt_age(db['last_message_at'])}",
            ),
            ("restarts", f"{db['restarts']['last_24h']} in 24 h, {db['restarts']['total']} total"),
            ("tasks", f"{db['tasks']['failed_24h']} failed in 24 h"),
        ]
    rows.append(("queue", _queue_line(queue)))
    latest = report["backups"]["latest"]
    rows.append(
        (
            "backups",
            f"{report['backups']['count']} snapshots"
            + (f", latest {latest['name']} {fmt_age(latest['created_at'])}" if latest else ""),
        )
    )
    show_table("Vigil status", ("what", "state"), rows)
    if "error" not in db and db["restarts"]["recent"]:
        show_table(
            "Recent restarts",
            ("at", "child", "reason", "exit", "uptime s"),
            [
                (
                    fmt_time(r["at"]),
                    r["child"],
                    r["reason"],
                    r["exit_code"],
                    f"{r['uptime_s']:.0f}" if r["uptime_s"] is not None else None,
                )
                for r in db["restarts"]["recent"]
            ],
        )
    if "error" not in db and db["tasks"]["recent"]:
        show_table(
            "Recent task runs",
            ("id", "task", "status", "processed", "took s", "error"),
            [
                (
                    t["id"],
                    t["name"],
                    t["status"],
                    t["processed_at"],
                    t["duration_s"],
                    clip(t["error"] or "", 60) or None,
                )
                for t in db["tasks"]["recent"]
            ],
        )


def _health_detail(health: dict[str, Any]) -> str:
    keys = ("telegram", "database", "llm")
    parts = [f"{k} {health[k]}" for k in keys if k in health]
    return f" ({', '.join(parts)})" if parts else ""


def _queue_line(queue: dict[str, Any] | None) -> str:
    if queue is None:
        return "-"
    if "error" in queue:
        return f"unavailable: {queue['error']}"
    return f"{queue['pending']} pending, {queue['scheduled']} scheduled ({queue['backend']})"


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
