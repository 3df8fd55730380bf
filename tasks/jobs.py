"""The bodies of Vigil's background tasks: plain functions of (settings, ...).

Each one calls ``core/`` (the same functions the CLI uses) and returns a small
JSON-able dict that ends up in ``server_tasks.result``. They know nothing of
Huey; ``tasks/queue.py`` wraps them into tasks and records every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from core import maintenance, media_upkeep, usage
from core.backups import runs as backup_runs
from core.backups import temp as backup_temp
from core.backups.retention import RetentionPolicy, prune_snapshots
from core.config import Settings
from core.database import Database, connect_sync
from core.media import MediaStore

log = logging.getLogger(__name__)

Job = Callable[..., dict[str, Any]]


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Any]:
    conn = connect_sync(settings.db_path, create=False)  # the worker never creates it
    try:
        yield conn
    finally:
        conn.close()


def cleanup_old_tasks(settings: Settings) -> dict[str, Any]:
    with database(settings) as conn:
        deleted = maintenance.cleanup_old_tasks(conn, days=settings.task_retention_days)
        events = maintenance.cleanup_old_events(conn)
        rolled = usage.rollup_and_expire(conn, days=settings.usage_retention_days)
        media = media_upkeep.sweep_orphans(conn, MediaStore(settings.media_dir))
    swept = backup_temp.sweep_leftovers(settings.backups_dir)
    return {
        "deleted": deleted,
        "backup_temp_removed": len(swept.paths),
        "backup_temp_bytes": swept.size_bytes,
        "days": settings.task_retention_days,
        "alerts_deleted": events["alerts"],
        "restarts_deleted": events["restarts"],
        "event_days": maintenance.EVENT_RETENTION_DAYS,
        "usage_rolled_up": rolled["rolled_up"],
        "usage_deleted": rolled["deleted"],
        "usage_days": settings.usage_retention_days,
        "media_orphans_removed": media.removed,
        "media_orphan_bytes": media.removed_bytes,
        "media_rows_without_file": media.missing,
    }


def backup_and_prune(
    settings: Settings,
    *,
    name: str | None = None,
    kind: str = "auto",
    trigger: str = "scheduled",
    with_secrets: bool = False,
) -> dict[str, Any]:
    """A recorded snapshot (``backup_runs``; a failure counts and alerts), then retention."""
    snapshot = backup_runs.take_backup(
        settings, trigger=trigger, kind=kind, name=name, with_secrets=with_secrets
    )
    removed = prune_snapshots(settings.backups_dir, RetentionPolicy.from_settings(settings))
    return {
        "snapshot": snapshot.name,
        "messages": snapshot.messages,
        "size_bytes": snapshot.total_bytes,
        "files": sorted(snapshot.files),
        "pruned": [s.name for s in removed],
    }


def daily_maintenance(settings: Settings) -> dict[str, Any]:
    with database(settings) as conn:
        return maintenance.daily_maintenance(conn)


def vacuum(settings: Settings) -> dict[str, Any]:
    with database(settings) as conn:
        return maintenance.vacuum_if_worthwhile(conn, settings.db_path)


def message_retention(settings: Settings) -> dict[str, Any]:
    days = settings.message_retention_days
    if days is None:
        return {"skipped": "message retention is off (VIGIL_MESSAGE_RETENTION_DAYS unset)"}
    with database(settings) as conn:
        result = media_upkeep.delete_old_messages(conn, MediaStore(settings.media_dir), days=days)
    return {**result, "days": days}


def refine_summaries(settings: Settings, *, within_s: float = 2 * 3600) -> dict[str, Any]:
    """Let the model rewrite extractive summaries of chats that overflowed lately."""
    with database(settings) as conn:
        chats = maintenance.overflowed_chats(conn, since=time.time() - within_s)
    if not chats:
        return {"refined": 0, "candidates": 0}
    return asyncio.run(_refine(settings, chats))


async def _refine(settings: Settings, chats: list[str]) -> dict[str, Any]:
    from core.context import ContextWindowManager
    from core.errors import LLMError
    from core.llm import llm_from_settings
    from core.memory import ChatMemory

    llm = llm_from_settings(settings)
    db = Database(settings.db_path, readers=1)
    try:
        status = await llm.probe()
        if status.state != "ok":
            return {"skipped": f"model {status.state}: {status.detail}", "candidates": len(chats)}
        await db.open(create=False)
        context = ContextWindowManager(
            ChatMemory(db),
            system_prompt=settings.system_prompt,
            max_messages=settings.context_max_messages,
            max_tokens=settings.context_max_tokens,
            summary_max_tokens=settings.context_summary_max_tokens,
        )
        refined, failed = 0, 0
        recorder = usage.UsageRecorder()  # kind "summary", no user: the worker's own calls
        for chat_id in chats:
            try:
                summarize = usage.metered_summarize(llm, recorder, chat_id, None)
                refined += int(await context.refine(chat_id, summarize))
            except LLMError as exc:
                failed += 1
                log.warning("summary of chat %s not refined: %s", chat_id, exc)
        await recorder.flush(db)
        return {"refined": refined, "failed": failed, "candidates": len(chats)}
    finally:
        await db.close()
        await llm.aclose()


JOBS: dict[str, Job] = {
    "cleanup_old_tasks": cleanup_old_tasks,
    "backup": backup_and_prune,
    "maintenance": daily_maintenance,
    "vacuum": vacuum,
    "message_retention": message_retention,
    "refine_summaries": refine_summaries,
}
