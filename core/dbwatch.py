"""Notices ``system.db`` being deleted or replaced under the running server.

A restore run by hand, a ``cp`` over the file, an ``rm``: the server keeps
writing to the file it holds open, which nobody will read again, so every
write it acknowledges from then on is lost at the next start. The watch
compares the path's device and inode with the open file every few seconds
(writes check it too, see ``Database.check_file``). On a change:

- writes are refused with 503 ``database_replaced`` and ``/health`` is
  ``unhealthy`` with that reason;
- a critical alert is raised;
- a governed restart brings the server back on whatever file is now at the
  path, through the same pre-flight checks as any start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 2.0
ACTION = (
    "the server restarts by itself on the file now at the path; if that was not "
    "intended, stop Vigil (scripts/stop.sh) and restore with scripts/vigilctl restore"
)


async def watch_database(runtime: Runtime, *, interval: float = CHECK_INTERVAL_S) -> str:
    """Check until the file changes; then alert, restart, and return how it changed."""
    db = runtime.db
    while True:
        how = db.check_file()
        if how is not None:
            await on_replaced(runtime, how)
            return str(how)
        # A write or /health that saw the change first wakes the watch at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(db.replaced_event.wait(), interval)


async def rescue_deleted(db: Any) -> str:
    """After an ``rm``: copy the still-open file back to the path (or beside it).

    The server still holds the deleted file open, with every acknowledged
    message in it. It is copied with the backup API; if the path is still
    empty the copy takes its place (a no-clobber link), so the restart comes
    back on the same data; otherwise it is kept as ``system.db.deleted-<time>``.
    """
    path: Path = db.path
    rescue = path.with_name(f"{path.name}.deleted-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        await db.copy_open_file(rescue)
    except Exception as exc:  # e.g. the data directory itself is gone
        log.error("could not copy the deleted database out of the server: %s", exc)
        return "its content could not be saved"
    try:
        os.link(rescue, path)  # fails if something is at the path by now
    except OSError:
        log.warning("the deleted database was saved as %s", rescue)
        return f"its content was saved as {rescue.name}"
    rescue.unlink(missing_ok=True)
    log.warning("the deleted database was copied back to %s from the server's open file", path)
    return "its content was copied back from the server's open file"


async def on_replaced(runtime: Runtime, how: str) -> None:
    detail = f"{runtime.db.path} was {how} while the server was running"
    if how == "deleted":
        detail += "; " + await rescue_deleted(runtime.db)
    monitoring = runtime.monitoring
    if monitoring is not None:
        try:
            await monitoring.condition(
                "database_replaced",
                True,
                alert_type="database_replaced",
                severity="critical",
                message=f"{detail}; writes are refused",
                action=ACTION,
            )
        except Exception:  # the restart below matters more than the alert
            log.exception("could not raise the database_replaced alert")
    runtime.request_restart("database_replaced", detail)


async def start_database_watch(
    app: Any, runtime: Runtime, stack: contextlib.AsyncExitStack
) -> None:
    """Starter: run the watch for the server's lifetime."""
    task = asyncio.ensure_future(watch_database(runtime))

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
