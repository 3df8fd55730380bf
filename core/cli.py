"""The operator commands of ``python main.py`` (seed 000's ``memoryctl`` set).

status, backup, restore, snapshots, history, search, summarize, cleanup,
validate, export. They work with the server running (WAL readers, short write
transactions) or stopped, never open the Telegram session, print a Rich table
or ``--json``, and fail with one line and a non-zero exit. ``register(cli)``
adds them to main.py's Typer app; the Huey queue depth for ``status`` is
injected by main.py (``core/`` does not import ``tasks/``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from core import backup as backups
from core import maintenance, restore
from core.cli_output import fail, fmt_bytes, guarded, print_json, progress_bar
from core.cli_views import (
    gather_status,
    render_history,
    render_search,
    render_snapshots,
    render_status,
    render_validate,
    server_answers,
)
from core.config import Settings, load_settings
from core.database import Database, connect_sync
from core.errors import BadRequest
from core.integrity import private_paths, repair_fts, validate_database
from core.memory import ROLES, ChatMemory, fts_query
from core.retention import RetentionPolicy, prune_snapshots

QueueDepth = Callable[[Settings], dict[str, Any]]
_injected: dict[str, QueueDepth] = {}
JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


def _settings() -> Settings:
    settings = load_settings()
    try:
        from core.logs import setup_logging

        setup_logging(
            settings.logs_dir,
            level=settings.log_level,
            secrets=settings.secrets(),
            json_lines=settings.log_json,
            console=False,
        )
    except OSError:
        pass  # logging to files is a convenience for the CLI, not a precondition
    return settings


def _user_path(path: Path | None) -> Path | None:
    """Relative paths are the caller's: scripts/vigilctl runs us from the install dir."""
    if path is None or path.is_absolute():
        return path
    return Path(os.environ.get("VIGILCTL_CWD", ".")) / path


def _require_db(settings: Settings) -> None:
    if not settings.db_path.is_file():
        fail(f"no database at {settings.db_path} (start the server once, or restore a backup)")


def _limit(value: int, name: str = "--limit", top: int = 100_000) -> int:
    if not 1 <= value <= top:
        raise BadRequest(f"{name} must be between 1 and {top}, got {value}")
    return value


async def _with_memory(settings: Settings, work: Callable[[ChatMemory], Any]) -> Any:
    db = Database(settings.db_path, readers=1)
    await db.open()
    try:
        return await work(ChatMemory(db))
    finally:
        await db.close()


@guarded
def status(as_json: bool = JSON_OPT) -> None:
    """Health, resources, restarts, queue depth and backups at a glance."""
    settings = _settings()
    report = gather_status(settings, _injected.get("queue_depth"))
    print_json(report) if as_json else render_status(report)


@guarded
def backup(
    name: str | None = typer.Option(
        None, "--name", help="Snapshot name (default snapshot_<UTC time>)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Take a compressed, checksummed, verified snapshot now."""
    settings = _settings()
    _require_db(settings)
    with progress_bar(not as_json) as progress:
        snap = backups.create_backup(
            settings.db_path, settings.backups_dir, name=name, progress=progress
        )
    if as_json:
        print_json(snap.to_dict())
        return
    typer.echo(
        f"backup {snap.name}: {snap.messages} messages, {fmt_bytes(snap.db_bytes)} -> "
        f"{fmt_bytes(snap.size_bytes)}, verified, in {snap.duration_s:.2f} s ({snap.path})"
    )


@guarded
def restore_cmd(
    name: str = typer.Argument(..., help="Snapshot name (see `snapshots`)."),
    confirm: bool = typer.Option(False, "--confirm", help="Really replace the database."),
    target_path: Path | None = typer.Option(
        None, "--target-path", help="Write a plain SQLite database here instead."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Restore a snapshot (live database: server stopped and --confirm)."""
    settings = _settings()
    target_path = _user_path(target_path)
    snap = backups.find_snapshot(settings.backups_dir, name)
    with progress_bar(not as_json) as progress:
        if target_path is not None:
            result = restore.restore_to_file(
                snap, target_path, overwrite=confirm, progress=progress
            )
        else:
            result = restore.restore_live(
                snap,
                settings.db_path,
                pid_file=settings.pid_file,
                confirm=confirm,
                answering=lambda: server_answers(settings),
                progress=progress,
            )
    data = {
        "snapshot": result.snapshot,
        "target": str(result.target),
        "messages": result.messages,
        "kept_aside": [str(p) for p in result.kept_aside],
    }
    if as_json:
        print_json(data)
        return
    typer.echo(f"restored {result.snapshot} to {result.target} ({result.messages} messages)")
    for path in result.kept_aside:
        typer.echo(f"previous file kept as {path}")


@guarded
def snapshots(
    verify: bool = typer.Option(False, "--verify", help="Re-check every checksum."),
    as_json: bool = JSON_OPT,
) -> None:
    """List snapshots, newest first."""
    settings = _settings()
    found = backups.list_snapshots(settings.backups_dir)
    states: dict[str, str] = {}
    if verify:
        with progress_bar(not as_json) as progress:
            for snap in found:
                try:
                    backups.verify_snapshot(snap, progress=progress)
                    states[snap.name] = "ok"
                except backups.SnapshotDamaged as exc:
                    states[snap.name] = exc.message
    if as_json:
        print_json(
            [{**s.to_dict(), **({"verify": states[s.name]} if verify else {})} for s in found]
        )
    else:
        render_snapshots(found, states)
    if any(v != "ok" for v in states.values()):
        raise typer.Exit(1)


@guarded
def history(
    chat: str | None = typer.Option(None, "--chat", help="Chat id; without it, list chats."),
    limit: int = typer.Option(20, "--limit", help="How many rows."),
    role: str | None = typer.Option(None, "--role", help="user, assistant or system."),
    as_json: bool = JSON_OPT,
) -> None:
    """A chat's recent messages (or the list of chats)."""
    settings = _settings()
    _require_db(settings)
    _limit(limit)
    if role is not None and role not in ROLES:
        raise BadRequest(f"--role must be one of {', '.join(ROLES)}, got {role!r}")

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
    chat: str | None = typer.Option(None, "--chat", help="Only this chat."),
    as_json: bool = JSON_OPT,
) -> None:
    """Full-text search over every message."""
    settings = _settings()
    _require_db(settings)
    _limit(limit, top=1000)
    if fts_query(query) is None:
        raise BadRequest("the query has no searchable words")

    async def work(memory: ChatMemory) -> Any:
        hits = await memory.search(query, limit=limit, chat_id=chat)
        return [{**_turn_dict(h.turn), "snippet": h.snippet, "rank": h.rank} for h in hits]

    hits = asyncio.run(_with_memory(settings, work))
    print_json(hits) if as_json else render_search(hits, query)


@guarded
def summarize(
    chat: str | None = typer.Option(None, "--chat", help="Chat id (default: the latest active)."),
    count: int = typer.Option(50, "--count", help="How many recent messages."),
    extractive: bool = typer.Option(False, "--extractive", help="Do not ask the model."),
    as_json: bool = JSON_OPT,
) -> None:
    """Summarise a chat's recent messages (the model if reachable, else extractive)."""
    from core.cli_views import summarize_chat

    settings = _settings()
    _require_db(settings)
    _limit(count, "--count", top=1000)
    result = asyncio.run(summarize_chat(settings, chat, count, use_model=not extractive))
    if as_json:
        print_json(result)
        return
    typer.echo(f"chat {result['chat_id']}: {result['messages']} messages ({result['source']})")
    typer.echo(result["summary"])


@guarded
def cleanup(
    keep: int | None = typer.Option(
        None, "--keep", help="Keep only the N newest snapshots (any kind)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go."),
    as_json: bool = JSON_OPT,
) -> None:
    """Prune snapshots (retention policy, or --keep N) and old task records."""
    settings = _settings()
    if keep is not None and keep < 0:
        raise BadRequest(f"--keep must be 0 or more, got {keep}")
    gone = prune_snapshots(
        settings.backups_dir,
        RetentionPolicy.from_settings(settings),
        keep_newest=keep,
        dry_run=dry_run,
    )
    report: dict[str, Any] = {"dry_run": dry_run, "snapshots_removed": [s.name for s in gone]}
    if settings.db_path.is_file() and not dry_run:
        conn = connect_sync(settings.db_path)
        try:
            report["task_records_removed"] = maintenance.cleanup_old_tasks(
                conn, days=settings.task_retention_days
            )
            if settings.message_retention_days:
                report["messages_removed"] = maintenance.delete_old_messages(
                    conn, days=settings.message_retention_days
                )
        finally:
            conn.close()
    if as_json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(gone)} snapshot(s): {', '.join(report['snapshots_removed']) or '-'}")
    if "task_records_removed" in report:
        typer.echo(f"removed {report['task_records_removed']} old task record(s)")
    if "messages_removed" in report:
        typer.echo(f"removed {report['messages_removed']} message(s) past retention")


@guarded
def validate(
    db: Path | None = typer.Option(None, "--db", help="Check this database file instead."),
    repair_fts_index: bool = typer.Option(
        False, "--repair-fts", help="Rebuild the search index (server stopped)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Integrity, search index, orphan rows, file permissions; exit 1 if anything is wrong."""
    settings = _settings()
    db = _user_path(db)
    path = db if db is not None else settings.db_path
    running = db is None and (
        restore.server_pid(settings.pid_file) is not None or server_answers(settings)
    )
    if repair_fts_index:
        if running:
            fail("stop the server before --repair-fts (the rebuild holds the write lock)")
        repair_fts(path)
    perms = (
        None
        if db is not None
        else private_paths(settings.data_dir, settings.db_path, settings.logs_dir)
    )
    steps = 7
    with progress_bar(not as_json) as progress:
        done = [0]

        def tick(_check: Any) -> None:
            done[0] += 1
            progress("validate", done[0], steps)

        checks = validate_database(path, full_fts=not running, permissions=perms, on_check=tick)
    if as_json:
        print_json(
            {
                "database": str(path),
                "ok": all(c.is_ok for c in checks),
                "checks": [c.to_dict() for c in checks],
            }
        )
    else:
        render_validate(path, checks, repaired=repair_fts_index)
    if not all(c.is_ok for c in checks):
        raise typer.Exit(1)


@guarded
def export(
    chat: str | None = typer.Option(None, "--chat", help="Only this chat."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to FILE (default stdout)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE."),
) -> None:
    """Messages as JSON lines, oldest first."""
    settings = _settings()
    _require_db(settings)
    output = _user_path(output)
    if output is not None and output.exists() and not force:
        raise BadRequest(f"{output} already exists; add --force to overwrite it")
    conn = connect_sync(settings.db_path, readonly=True)
    try:
        if (
            chat is not None
            and not conn.execute("SELECT 1 FROM chats WHERE id = ?", (chat,)).fetchone()
        ):
            fail(f"no chat with id {chat!r}")
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
    """Add the operator commands to main.py's Typer app."""
    if queue_depth is not None:
        _injected["queue_depth"] = queue_depth
    for name, command in (
        ("status", status),
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
